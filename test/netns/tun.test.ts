/**
 * The TUN addon against a real kernel, in a namespace this test makes and always removes.
 *
 *   namespace tn-<pid>-tun
 *   ┌───────────────────────────────────────────────────────────────────┐
 *   │ lo up                                                             │
 *   │ 10.213.0.1/32 on tnt<pid> (TUN) ──► helpers/tun-child.js (addon)  │
 *   │ route 10.213.1.0/24 dev tnt<pid>    (answers, writes back) ──┘    │
 *   └───────────────────────────────────────────────────────────────────┘
 *
 * The child opens the TUN, plumbs it and reports what it saw as one JSON line.
 */

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { addonPath } from "../../src/io/tun.js";

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "helpers", "tun-child.js");
const NS = `tn-${process.pid}-tun`;

function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

function missing(): string | undefined {
  const need: string[] = [];
  if (process.getuid?.() !== 0) need.push("root");
  if (!existsSync("/dev/net/tun")) need.push("/dev/net/tun");
  if (!hasCommand("ip")) need.push("iproute2 (ip)");
  if (!hasCommand("ping")) need.push("ping (iputils-ping)");
  if (addonPath() === undefined) need.push("the native addon (npm rebuild)");
  return need.length > 0 ? `needs ${need.join(", ")}` : undefined;
}

/** Run the child in the namespace and parse its one JSON line. */
function child(mode: string, name: string): Record<string, unknown> {
  const r = spawnSync("ip", ["netns", "exec", NS, process.execPath, CHILD, mode, name], {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (r.status !== 0) {
    throw new Error(`child ${mode} exited ${r.status} (${r.signal ?? ""}): ${r.stderr}`);
  }
  const line = r.stdout.trim().split("\n").pop() ?? "";
  return JSON.parse(line) as Record<string, unknown>;
}

const skip = missing();

t.test("the TUN addon reads, writes and hands over GSO super-packets", { skip }, async (t) => {
  execFileSync("ip", ["netns", "add", NS]);
  try {
    execFileSync("ip", ["-n", NS, "link", "set", "lo", "up"]);

    t.test(
      "a UDP datagram and pings from the namespace arrive; echo replies written back make ping succeed",
      (t) => {
        const r = child("rw", `tnt${process.pid}`);
        t.equal(r.name, `tnt${process.pid}`, "TUNSETIFF returns the name asked for");
        t.equal(r.vnetHdr, false);
        t.match(r.udp, {
          src: "10.213.0.1",
          dst: "10.213.1.2",
          dport: 9999,
          payloadMatches: true,
          ipChecksumOk: true,
          udpChecksumOk: true,
        });
        const udp = r.udp as { len: number; totalLength: number };
        t.equal(udp.len, udp.totalLength, "the slot length is the IP total length (IFF_NO_PI)");
        t.equal(r.pingExit, 0, `ping -c 3 succeeds:\n${String(r.pingOut)}`);
        t.match(r.pingOut, /3 packets transmitted, 3 received/);
        t.ok((r.echoesAnswered as number) >= 3);
        t.match(r.stats, { packetsWritten: Number, writeDropped: 0, writeRejected: 0 });
        t.ok((r.stats as { packetsWritten: number }).packetsWritten >= 3);
        t.equal(
          r.secondQueueOnSingle,
          "TUNNAT_ERR_NO_TUN",
          "a multi-queue open of a single-queue TUN is refused with the TUN error code",
        );
        t.match(r.goneError, { severity: "gone" }, "deleting the link reaches onError as 'gone'");
        t.equal(r.closedAfterGone, true, "and closes the device");
        t.end();
      },
    );

    t.test("more packets than slots all arrive, in batches no larger than the arena", (t) => {
      const r = child("burst", `tnb${process.pid}`);
      const sizes = r.batchSizes as number[];
      t.equal(r.received, r.sent, `all ${r.sent} datagrams arrive`);
      t.ok(
        sizes.every((n) => n >= 1 && n <= (r.slots as number)),
        `batch sizes ${sizes.join(",")}`,
      );
      t.ok(sizes.length < (r.sent as number), "packets were batched, not delivered one per call");
      t.end();
    });

    t.test(
      "an exception in the batch handler reaches uncaughtException and close() inside it is safe",
      (t) => {
        const r = child("throw", `tnx${process.pid}`);
        t.equal(r.uncaught, "boom from onBatch");
        t.equal(r.calls, 1, "no batch after close()");
        t.equal(r.closed, true);
        t.end();
      },
    );

    t.test("two multi-queue opens of one name attach two queues of one interface", (t) => {
      const r = child("mq", `tnm${process.pid}`);
      const names = r.names as string[];
      const fds = r.fds as number[];
      t.equal(names[0], names[1]);
      t.not(fds[0], fds[1]);
      t.same(r.multiQueue, [true, true]);
      t.end();
    });

    t.test(
      "two queues: the kernel spreads flows by hash, then steers each to the queue that last wrote it",
      (t) => {
        const r = child("steer", `tns${process.pid}`);
        t.comment(`first packets per queue: ${JSON.stringify(r.firstOnQueue)}`);
        t.equal(r.firstSeen, 32, "every flow's first datagram arrived");
        const [q0, q1] = r.firstOnQueue as [number, number];
        t.ok(q0 > 0 && q1 > 0, `the flow hash used both queues (${q0} / ${q1})`);
        t.equal(r.secondSeen, 32);
        t.equal(
          r.followedTheWriter,
          32,
          "after an answer written on the other queue, every flow arrived there",
        );
        t.equal(r.oversizeWritten, 0, "a length beyond the slot is not written (not cut short)");
        t.match(r.oversizeStats, { writeOversize: 1 });
        t.end();
      },
    );

    t.test(
      "with vnetHdr and offloads a large TCP send arrives as TCPV4 GSO packets longer than the MTU",
      (t) => {
        const r = child("gso", `tng${process.pid}`);
        t.comment(`offloads on this kernel: ${JSON.stringify(r.offloads)}`);
        t.match(r.offloads, { csum: true, tso4: true, tso6: true });
        t.ok((r.gsoTcpv4 as number) >= 1, `TCPV4 GSO packets seen: ${r.gsoTcpv4}`);
        t.ok(
          (r.maxLen as number) > (r.mtu as number) + 10,
          `largest packet ${r.maxLen} bytes > MTU ${r.mtu} + vnet header`,
        );
        t.equal(r.maxGsoSize, 1460, "gso_size is the MSS");
        t.equal(r.badVnet, 0, "every IP total length matches the slot length minus the header");
        t.equal(r.bytesAcked, 1 << 20, "the whole 1 MB crossed the TUN");
        t.ok((r.needsCsum as number) >= 1, "TUN_F_CSUM lets the kernel send NEEDS_CSUM packets");
        t.equal(r.partialBad, 0, "every NEEDS_CSUM packet holds the plain pseudo-header sum");
        t.equal(r.partialOk, r.needsCsum);
        t.end();
      },
    );
  } finally {
    execFileSync("ip", ["netns", "del", NS]);
  }
});
