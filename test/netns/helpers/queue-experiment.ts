/**
 * The measured experiment behind the multi-queue design (native-notes/README.md "Multi-queue"):
 * how many packets per second a TUN reflector moves with
 *   single   one queue, read and written on the main thread (TunDevice, today's loop);
 *   native   two queues, native I/O threads + the main thread's handler (QueuedTunDevice, design a);
 *   workers  two queues, one worker_thread per queue, each reading and writing its own queue with
 *            the same handler (design b without the shared table and the handoff: its ceiling).
 * The handler swaps the addresses and ports of each UDP datagram (checksums stay valid), so the
 * kernel's work happens in the write, as for the daemon: the answer is delivered locally to a
 * closed port and the kernel answers it with an ICMP port unreachable (dropped by the reflector).
 *
 * Usage (root): node dist/test/netns/helpers/queue-experiment.js [seconds]
 * It makes a namespace tnqx-<pid>, runs itself inside it with two `hping3 --flood` UDP senders
 * bounded by `timeout` for each variant (twice, alternating), and removes the namespace at the
 * end, also on failure. Prints one JSON line.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { openQueuedTun } from "../../../src/io/queues.js";
import { openTun } from "../../../src/io/tun.js";

const TUN = "tnqx0";
const LOCAL = "10.214.0.1";
const PEER = "10.214.1.2";

/** Swap source and destination address and port of every UDP packet; drop everything else. */
function reflect(buf: Uint8Array, slotSize: number, lengths: Int32Array, count: number): number {
  let n = 0;
  for (let i = 0; i < count; i++) {
    const o = i * slotSize;
    if (buf[o + 9] !== 17) {
      lengths[i] = 0;
      continue;
    }
    const ihl = (buf[o]! & 15) * 4;
    for (let k = 0; k < 4; k++) {
      const a = buf[o + 12 + k]!;
      buf[o + 12 + k] = buf[o + 16 + k]!;
      buf[o + 16 + k] = a;
    }
    for (let k = 0; k < 2; k++) {
      const a = buf[o + ihl + k]!;
      buf[o + ihl + k] = buf[o + ihl + 2 + k]!;
      buf[o + ihl + 2 + k] = a;
    }
    n++;
  }
  return n;
}

if (!isMainThread) {
  // A worker of the "workers" variant: its own queue, its own loop.
  const dev = openTun({ name: workerData.name as string, multiQueue: true });
  let moved = 0;
  dev.start((count) => {
    moved += reflect(dev.buffer, dev.slotSize, dev.lengths, count);
    dev.write(count);
  });
  parentPort?.on("message", (m) => {
    if (m === "stop") {
      dev.close();
      parentPort?.postMessage(moved);
    }
  });
  parentPort?.postMessage("ready");
} else if (process.argv[3] !== "inner") {
  // Outer: make the namespace, run the experiment inside it, always remove it.
  const ns = `tnqx-${process.pid}`;
  execFileSync("ip", ["netns", "add", ns]);
  try {
    const r = spawnSync(
      "ip",
      [
        "netns",
        "exec",
        ns,
        process.execPath,
        fileURLToPath(import.meta.url),
        process.argv[2] ?? "5",
        "inner",
      ],
      { stdio: "inherit", timeout: 300_000 },
    );
    process.exitCode = r.status ?? 1;
  } finally {
    execFileSync("ip", ["netns", "del", ns]);
  }
} else {
  const seconds = Number(process.argv[2] ?? 5);
  const ip = (...a: string[]) => execFileSync("ip", a);
  const flood = async (): Promise<void> => {
    const senders = [0, 1].map((i) =>
      spawn(
        "timeout",
        [
          String(seconds),
          "hping3",
          "--flood",
          "-q",
          "-2",
          "-p",
          "9999",
          "-s",
          String(20000 + i * 10000),
          "-d",
          "64",
          PEER,
        ],
        { stdio: "ignore" },
      ),
    );
    await Promise.all(senders.map((c) => new Promise((r) => c.on("exit", r))));
  };
  const plumb = () => {
    ip("addr", "add", `${LOCAL}/32`, "dev", TUN);
    ip("link", "set", TUN, "up");
    ip("route", "add", "10.214.1.0/24", "dev", TUN);
  };
  const cpu = () => process.cpuUsage();
  const result: Record<string, unknown[]> = {};
  {
    ip("link", "set", "lo", "up");
    const run = async (variant: string) => {
      const c0 = cpu();
      let moved = 0;
      if (variant === "single") {
        const dev = openTun({ name: TUN });
        plumb();
        dev.start((count) => {
          moved += reflect(dev.buffer, dev.slotSize, dev.lengths, count);
          dev.write(count);
        });
        await flood();
        dev.close();
      } else if (variant === "native") {
        const dev = openQueuedTun({ name: TUN, queues: 2, pollUs: 0 });
        plumb();
        dev.start((count) => {
          moved += reflect(dev.buffer, dev.slotSize, dev.lengths, count);
          dev.write(count);
        });
        await flood();
        dev.close();
      } else {
        // The first queue is opened here so the name exists with multi-queue flags; the
        // workers then attach two more queues and this one is closed before the flood.
        const holder = openTun({ name: TUN, multiQueue: true });
        const workers = [0, 1].map(
          () => new Worker(new URL(import.meta.url), { workerData: { name: TUN } }),
        );
        await Promise.all(workers.map((w) => new Promise((r) => w.once("message", r))));
        holder.close();
        plumb();
        await flood();
        const counts = await Promise.all(
          workers.map(
            (w) =>
              new Promise<number>((r) => {
                w.once("message", (m) => r(m as number));
                w.postMessage("stop");
              }),
          ),
        );
        for (const w of workers) await w.terminate();
        moved = counts.reduce((a, b) => a + b, 0);
      }
      const c1 = cpu();
      const rows = result[variant] ?? [];
      result[variant] = rows;
      rows.push({
        packetsPerSecond: Math.round(moved / seconds),
        processCpuSeconds: Number(((c1.user - c0.user + c1.system - c0.system) / 1e6).toFixed(2)),
      });
    };
    for (const v of ["single", "native", "workers", "single", "native", "workers"]) await run(v);
  }
  process.stdout.write(`${JSON.stringify({ seconds, ...result })}\n`);
}
