/**
 * Restart with nothing lost (issue 12 §1), against the real daemon in the lab:
 *
 *   p1 ── br-in ──[nat: tunnat0]── out0 ── inet (server: TCP + UDP echo)
 *
 * - 50 TCP connections sending a line every 100 ms and 20 UDP sockets sending a datagram every
 *   100 ms go through one daemon across a SIGTERM restart: none is reset, the server never sees
 *   a new connection or a second source port for a UDP client (same outside ports), and the
 *   forwarding gap (the longest wait for an echo) is printed, not asserted.
 * - The same across kill -9 with a 1 s checkpoint: the next start removes the dead run's
 *   plumbing, restores the checkpoint, and the flows in it go on.
 * - A state file from another configuration (another port range) is refused, the log says why,
 *   and the daemon starts empty.
 *
 * Needs root. Namespaces are `tnrst-<pid>-*`, removed in teardown.
 */
import { join } from "node:path";
import t from "tap";
import { HELPERS, Lab, missing, sleep } from "./helpers/lab.js";

// HELPERS is the source folder (for .py files); the compiled peer sits under dist/.
const PEER = join(HELPERS, "..", "..", "..", "dist", "test", "netns", "helpers", "restart-peer.js");
const PORT = 7777;
const TCP = 50;
const UDP = 20;

interface ClientResult {
  tcpOpen: number;
  tcpErrors: string[];
  tcpClosed: number;
  tcpMaxWaitMs: number;
  udpSent: number;
  udpAnswered: number;
  udpMaxSilenceMs: number;
  tcpStaleAtEnd: number;
  udpStaleAtEnd: number;
}

const reason = missing(["curl"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnrst");
  t.teardown(() => lab.down());
  const server = lab.spawn("inet", [process.execPath, PEER, "server", String(PORT)]);
  for (let i = 0; i < 50 && !server.out().includes("listening"); i++) await sleep(100);
  const srvAddr = lab.inet[0] ?? "";
  const STATE = ["--table-state-file", join(lab.tmp, "table.state")];

  /** Server events since `from` (an offset into its output). */
  const events = (from: number) =>
    server
      .out()
      .slice(from)
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { accept?: number; udp?: string; port?: number });

  const metric = async (name: string): Promise<number> => {
    const m = new RegExp(`^${name} ([0-9.e+-]+)$`, "m").exec(await lab.metricsText());
    return m ? Number(m[1]) : Number.NaN;
  };

  /**
   * Traffic from 1.5 s before `during` until well after it: `during` returns how long forwarding
   * stopped, and a TCP sender backs off exponentially while it is stopped, so its next
   * retransmission may come up to that long after forwarding resumes; then 2.5 s more. At most
   * `seconds` in all, so a machine too slow to restart ends the test instead of hanging it.
   */
  const withTraffic = async (seconds: number, during: () => Promise<number>) => {
    const mark = server.out().length;
    const client = lab.spawn("p1", [
      process.execPath,
      PEER,
      "client",
      srvAddr,
      String(PORT),
      String(TCP),
      String(UDP),
      String(seconds),
    ]);
    await sleep(1500);
    const outage = await during();
    await sleep(outage + 2500);
    client.child.kill("SIGTERM");
    await client.exited;
    const line = client.out().trim().split("\n").pop() ?? "{}";
    const res = JSON.parse(line) as ClientResult;
    const ev = events(mark);
    const udpPorts = new Map<string, Set<number>>();
    for (const e of ev)
      if (e.udp !== undefined) {
        const s = udpPorts.get(e.udp) ?? new Set<number>();
        s.add(e.port ?? 0);
        udpPorts.set(e.udp, s);
      }
    return { res, accepts: ev.filter((e) => e.accept !== undefined).length, udpPorts };
  };

  t.test("a SIGTERM restart keeps every TCP connection and UDP mapping", async (t) => {
    await lab.startDaemon(STATE);
    let restoreLine = "";
    let stopMs = 0;
    const { res, accepts, udpPorts } = await withTraffic(40, async () => {
      const t0 = Date.now();
      t.equal(await lab.stopDaemon(), 0, "the old daemon exits 0");
      stopMs = Date.now() - t0;
      const d = await lab.startDaemon(STATE);
      t.comment(`stop took ${stopMs} ms, stop to healthy ${Date.now() - t0} ms`);
      restoreLine =
        d
          .out()
          .split("\n")
          .find((l) => l.includes("restored")) ?? "";
      return Date.now() - t0;
    });
    t.match(restoreLine, /restored \d+ flows/, "the new daemon says what it restored");
    const restored = Number(/"flows":(\d+)/.exec(restoreLine)?.[1] ?? 0);
    t.ok(restored >= TCP + UDP, `${restored} flows restored (>= ${TCP + UDP})`);
    t.ok((await metric("tunnat_state_restore_seconds")) > 0, "the restore time is a metric");
    t.equal(res.tcpOpen, TCP, "every connection opened");
    t.same(res.tcpErrors, [], "no connection reset or failed");
    t.equal(res.tcpClosed, 0, "no connection closed");
    t.equal(res.tcpStaleAtEnd, 0, "every connection is exchanging lines again after the restart");
    t.equal(res.udpStaleAtEnd, 0, "every UDP socket is answered again after the restart");
    t.equal(accepts, TCP, "the server accepted each connection once: no reconnect");
    t.equal(udpPorts.size, UDP, "every UDP client reached the server");
    t.ok(
      [...udpPorts.values()].every((s) => s.size === 1),
      "each UDP client kept its one outside port",
    );
    const lost = res.udpSent - res.udpAnswered;
    t.comment(
      `forwarding gap: TCP longest echo wait ${res.tcpMaxWaitMs} ms, UDP longest silence ${res.udpMaxSilenceMs} ms; UDP lost ${lost} of ${res.udpSent} (at 10/s per socket)`,
    );
  });

  t.test("kill -9 with a checkpoint: the next start cleans up and restores it", async (t) => {
    await lab.startDaemon([...STATE, "--checkpoint-interval", "1s"]);
    let restoreLine = "";
    const { res, accepts, udpPorts } = await withTraffic(40, async () => {
      // Wait for a checkpoint holding the flows, then kill without warning.
      for (
        let i = 0;
        i < 40 && !((await metric("tunnat_state_checkpoint_flows")) >= TCP + UDP);
        i++
      )
        await sleep(100);
      t.ok(
        (await metric("tunnat_state_checkpoint_flows")) >= TCP + UDP,
        "a checkpoint has the flows",
      );
      t.comment(
        `checkpoint: ${(await metric("tunnat_state_checkpoint_seconds")) * 1000} ms, longest slice ${(await metric("tunnat_state_checkpoint_max_slice_seconds")) * 1000} ms`,
      );
      const d = lab.daemon;
      d?.child.kill("SIGKILL");
      await d?.exited;
      lab.daemon = undefined;
      const t0 = Date.now();
      const d2 = await lab.startDaemon([...STATE, "--checkpoint-interval", "1s"]);
      t.comment(`kill -9 to healthy ${Date.now() - t0} ms`);
      restoreLine =
        d2
          .out()
          .split("\n")
          .find((l) => l.includes("restored")) ?? "";
      return Date.now() - t0;
    });
    t.match(restoreLine, /restored \d+ flows/);
    t.same(res.tcpErrors, [], "no connection reset");
    t.equal(res.tcpStaleAtEnd, 0, "every connection goes on after the restart");
    t.equal(res.udpStaleAtEnd, 0, "every UDP socket is answered after the restart");
    t.equal(accepts, TCP, "no reconnect");
    t.ok(
      [...udpPorts.values()].every((s) => s.size === 1),
      "each UDP client kept its outside port",
    );
    t.comment(
      `after kill -9: TCP longest echo wait ${res.tcpMaxWaitMs} ms, UDP longest silence ${res.udpMaxSilenceMs} ms, UDP lost ${res.udpSent - res.udpAnswered} of ${res.udpSent}`,
    );
  });

  t.test(
    "a state file from another configuration is refused; the daemon starts empty",
    async (t) => {
      // The previous test left a daemon with flows: stop it so it saves them.
      t.equal(await lab.stopDaemon(), 0);
      const d = await lab.startDaemon([...STATE, "--ports", "20000-60000"]);
      const log = d.out();
      t.comment(log.split("\n").find((l) => l.includes("refused")) ?? "");
      t.match(
        log,
        /table state file refused: written with another configuration \(ports \\"1-65535\\" -> \\"20000-60000\\"\)/,
      );
      t.notMatch(log, /restored \d+ flows/);
      t.equal(await metric("tunnat_state_restore_refused"), 1);
      t.equal(await metric("tunnat_state_restored_flows"), 0);
      await lab.stopDaemon();
    },
  );
}
