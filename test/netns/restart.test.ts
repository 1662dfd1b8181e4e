/**
 * Restart with nothing lost (issue 12 §1), against the real daemon in the lab:
 *
 *   p1 ── br-in ──[nat: tunnat0]── out0 ── inet (server: TCP + UDP echo)
 *
 * - 50 TCP connections sending a line every 100 ms and 20 UDP sockets sending a datagram every
 *   100 ms, plus a probe datagram every 5 ms, go through one daemon across each way of
 *   restarting (docs/operations.md §Restart): none is reset, the server never sees a new
 *   connection or a second source port for a UDP client (same outside ports), and the forwarding
 *   gap (the longest wait for an echo, the probe's longest silence, the daemons' own timelines)
 *   and the packets lost (probe datagrams not answered) are printed, not asserted.
 *   - SIGTERM and start again: the plumbing and the TUN are removed and put back.
 *   - `tunnat restart` (a handover): the TUN, the plumbing and the table go to a new process;
 *     the TUN is the same device after it and its queue overflowed by nothing.
 * - A handover the new process refuses (a setting that shapes the kernel state changed) leaves
 *   the old daemon forwarding as before, on the same TUN; one whose new process fails after it
 *   took everything over (a test hook) ends with both gone, the plumbing removed and the guard
 *   kept (fail closed), the old one exiting 1.
 * - The same traffic across kill -9 with a 1 s checkpoint: the next start removes the dead run's
 *   plumbing, restores the checkpoint, and the flows in it go on.
 * - A state file from another configuration (another port range) is refused, the log says why,
 *   and the daemon starts empty.
 *
 * Needs root. Namespaces are `tnrst-<pid>-*`, removed in teardown.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import t, { type Test } from "tap";
import { BIN, missing, sleep } from "./helpers/lab.js";
import { type Restart, RestartLab, type TrafficResult } from "./helpers/restart-lab.js";

const TCP = 50;
const UDP = 20;
const PROBE_MS = 5;

const reason = missing(["curl"]);
if (reason) t.plan(0, reason);
else {
  const rl = await RestartLab.up("tnrst");
  t.teardown(() => rl.down());
  const lab = rl.lab;
  const STATE = ["--table-state-file", join(lab.tmp, "table.state")];
  const traffic = { seconds: 40, tcp: TCP, udp: UDP, probeMs: PROBE_MS };

  const metric = async (name: string): Promise<number> => {
    const m = new RegExp(`^${name} ([0-9.e+-]+)$`, "m").exec(await lab.metricsText());
    return m ? Number(m[1]) : Number.NaN;
  };

  /** The assertions every restart that keeps the table must pass. */
  const keptEverything = (t: Test, r: TrafficResult) => {
    const { res, accepts, udpPorts } = r;
    t.equal(res.tcpOpen, TCP, "every connection opened");
    t.same(res.tcpErrors, [], "no connection reset or failed");
    t.equal(res.tcpClosed, 0, "no connection closed");
    t.equal(res.tcpStaleAtEnd, 0, "every connection is exchanging lines again after the restart");
    t.equal(res.udpStaleAtEnd, 0, "every UDP socket is answered again after the restart");
    t.equal(accepts, TCP, "the server accepted each connection once: no reconnect");
    t.equal(udpPorts.size, UDP + 1, "every UDP client (and the probe) reached the server");
    t.ok(
      [...udpPorts.values()].every((s) => s.size === 1),
      "each UDP client kept its one outside port",
    );
  };

  /** One comment line per restart: the gap by every measure, and what was lost. */
  const report = (t: Test, way: string, r: TrafficResult, x: Restart) => {
    const { res } = r;
    t.comment(
      `${way}: gap ${res.probeMaxGapMs} ms (probe every ${PROBE_MS} ms), lost ${res.probeSent - res.probeAnswered} of ${res.probeSent} probe datagrams; daemon gap ${x.daemonGapMs === null ? "?" : x.daemonGapMs.toFixed(1)} ms; TCP longest echo wait ${res.tcpMaxWaitMs} ms; UDP lost ${res.udpSent - res.udpAnswered} of ${res.udpSent}; TUN queue drops ${Number.isNaN(x.tunDropped) ? "n/a (new TUN)" : x.tunDropped}; restart took ${x.ms} ms`,
    );
    t.comment(`${way}: old daemon ${JSON.stringify(x.stop)}`);
    t.comment(`${way}: new daemon (ms since exec) ${JSON.stringify(x.start)}`);
  };

  t.test("a SIGTERM restart keeps every TCP connection and UDP mapping", async (t) => {
    await lab.startDaemon(STATE);
    let x: Restart | undefined;
    const r = await rl.withTraffic(traffic, async () => {
      x = await rl.sigterm(STATE);
      return x.ms;
    });
    if (!x) throw new Error("no restart");
    t.match(x.restoreLine, /restored \d+ flows/, "the new daemon says what it restored");
    const restored = Number(/"flows":(\d+)/.exec(x.restoreLine)?.[1] ?? 0);
    t.ok(restored >= TCP + UDP, `${restored} flows restored (>= ${TCP + UDP})`);
    t.ok((await metric("tunnat_state_restore_seconds")) > 0, "the restore time is a metric");
    keptEverything(t, r);
    report(t, "SIGTERM restart", r, x);
  });

  /** `tunnat restart` of the lab's daemon under the traffic; the old daemon, the restart, the traffic. */
  const handoverUnderTraffic = async () => {
    const old = lab.daemon;
    let x: (Restart & { successor: number; verb: string }) | undefined;
    const r = await rl.withTraffic(traffic, async () => {
      x = await rl.handover();
      return x.ms;
    });
    if (!x || !old) throw new Error("no restart");
    return { old, x, r };
  };

  t.test("tunnat restart hands the gateway over to a new process", async (t) => {
    const { old, x, r } = await handoverUnderTraffic();
    t.match(x.verb, /"successor":\d+/, "tunnat restart names the new process");
    t.not(x.successor, old.child.pid, "a new process forwards");
    t.match(old.out(), /handed over to pid \d+/, "the old daemon says it handed over");
    t.match(x.restoreLine, /restored \d+ flows/, "the new daemon restored the table");
    t.ok(x.ifindex[0] > 0 && x.ifindex[0] === x.ifindex[1], "the TUN is the same device");
    t.equal(x.tunDropped, 0, "the TUN's queue dropped nothing while no process read it");
    keptEverything(t, r);
    report(t, "tunnat restart", r, x);
    const stats = await lab.exec("nat", [
      process.execPath,
      BIN,
      "stats",
      "--json",
      "--socket",
      lab.controlSocket,
    ]);
    t.equal(
      (JSON.parse(stats.stdout) as { gateway: { pid: number } }).gateway.pid,
      x.successor,
      "the control socket is the new process's",
    );
    // The successor owns everything now: a plain stop leaves what a stop leaves.
    t.equal(await lab.stopDaemon(), 0, "the new daemon stops with exit 0");
    const routes = await lab.sh("nat", ["ip", "route", "show"]);
    t.notMatch(routes, /tunnat0/, "its stop removed the routes into the TUN");
    t.notMatch(await lab.sh("nat", ["ip", "link", "show"]), /tunnat0/, "and the TUN");
  });

  t.test("with two queues a handover loses nothing the I/O threads held", async (t) => {
    // A multi-queue TUN's threads hold packets they read and packets to write; before the old
    // daemon quiesced them, each handover lost a few of those (0-6 probe datagrams).
    await lab.startDaemon([...STATE, "--queues", "2"]);
    const { old, x, r } = await handoverUnderTraffic();
    t.match(old.out(), /handed over to pid \d+/, "the old daemon handed over");
    t.notMatch(old.out(), /did not finish their packets/, "its queues' threads finished in time");
    t.equal(x.tunDropped, 0, "the TUN's queues dropped nothing while no process read them");
    keptEverything(t, r);
    t.equal(r.res.probeSent - r.res.probeAnswered, 0, "not one probe datagram was lost");
    report(t, "tunnat restart, 2 queues", r, x);
    t.equal(await lab.stopDaemon(), 0, "the new daemon stops with exit 0");
  });

  t.test("a handover the new process refuses leaves the old one forwarding", async (t) => {
    const cfg = join(lab.tmp, "restart.json");
    writeFileSync(cfg, JSON.stringify({ tunQueueLength: 1000 }));
    const d = await lab.startDaemon([...STATE, "--config", cfg]);
    const [if0] = await rl.tunCounters();
    // A setting the TUN was made with: the successor must refuse to adopt it.
    writeFileSync(cfg, JSON.stringify({ tunQueueLength: 2000 }));
    const v = await lab.exec(
      "nat",
      [process.execPath, BIN, "restart", "--socket", lab.controlSocket],
      { timeoutMs: 90_000 },
    );
    t.equal(v.code, 1, "tunnat restart exits 1");
    t.match(v.stderr, /exited before taking over; pid \d+ goes on forwarding/);
    await sleep(300);
    t.match(d.out(), /these settings must not change: tunQueueLength/, "the log says why");
    t.match(d.out(), /handover restart refused, forwarding on/);
    t.equal(d.child.exitCode, null, "the old daemon runs");
    t.equal((await rl.tunCounters())[0], if0, "on the same TUN");
    t.ok(await lab.daemonAnswers("/readyz"), "and is ready");
    const ping = await lab.exec("p1", ["ping", "-c", "2", "-W", "2", "-i", "0.2", rl.srvAddr]);
    t.equal(ping.code, 0, "and forwards");
    t.equal(await lab.stopDaemon(), 0);
  });

  t.test(
    "a successor that fails after taking over: both fail closed, the old exits 1",
    async (t) => {
      // The daemon inherits the environment; only the successor acts on the hook.
      process.env.TUNNAT_TEST_HANDOVER_FAULT = "after-go";
      const d = await lab.startDaemon(STATE);
      delete process.env.TUNNAT_TEST_HANDOVER_FAULT;
      const v = await lab.exec(
        "nat",
        [process.execPath, BIN, "restart", "--json", "--socket", lab.controlSocket],
        { timeoutMs: 90_000 },
      );
      t.equal(v.code, 1, "tunnat restart exits 1");
      t.match(v.stderr, /exited before taking over/);
      t.equal(await d.exited, 1, "the old daemon stops and exits 1");
      lab.daemon = undefined;
      t.match(d.out(), /handover restart failed/, "and says why");
      t.match(d.out(), /test fault after the handover's go/);
      t.notMatch(await lab.sh("nat", ["ip", "link", "show"]), /tunnat0/, "the TUN is gone");
      t.notMatch(
        await lab.sh("nat", ["ip", "route", "show"]),
        /tunnat0/,
        "no route into it is left",
      );
      t.same((await lab.sh("nat", ["ip", "neigh", "show", "proxy"])).trim(), "", "no proxy ARP");
      t.match(
        await lab.sh("nat", ["nft", "list", "tables"]),
        /table ip tunnat_/,
        "the guard stays: the gateway fails closed",
      );
      const successor = Number(/the new process \(pid (\d+)\)/.exec(v.stderr)?.[1] ?? 0);
      t.ok(successor > 0, "tunnat restart named the new process");
      let left = "";
      try {
        left = readFileSync(`/proc/${successor}/stat`, "utf8");
      } catch {
        // gone
      }
      t.ok(left === "" || / Z /.test(left), "the new process is gone too");
    },
  );

  t.test("kill -9 with a checkpoint: the next start cleans up and restores it", async (t) => {
    await lab.startDaemon([...STATE, "--checkpoint-interval", "1s"]);
    let restoreLine = "";
    const r = await rl.withTraffic(traffic, async () => {
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
    const { res, accepts, udpPorts } = r;
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
      `after kill -9: gap ${res.probeMaxGapMs} ms, lost ${res.probeSent - res.probeAnswered} of ${res.probeSent} probe datagrams; TCP longest echo wait ${res.tcpMaxWaitMs} ms, UDP lost ${res.udpSent - res.udpAnswered} of ${res.udpSent}`,
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
