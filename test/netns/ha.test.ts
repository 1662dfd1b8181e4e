/**
 * An active/standby pair (src/ha) with real sockets: two tunnat gateways on shared inside and
 * outside segments, keepalived (VRRP) moving the inside gateway address, tunnat's sync keeping
 * the standby's table, gratuitous ARP moving the NAT address. Topology in helpers/ha-lab.ts.
 *
 * 50 TCP connections exchanging a line every 100 ms and 20 UDP mappings run through the pair
 * while the sync link breaks, the standby stops (SIGSTOP) and restarts, the active is killed
 * with SIGKILL, comes back as the standby and catches up, and the new active is killed in turn:
 * no connection is reset, every one keeps its outside port, and the gaps are measured. Then an
 * iperf3 TCP stream crosses a failover.
 *
 * Needs root, keepalived, arping, curl, iperf3. Namespaces `tnha-<pid>-*`, removed in teardown.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { A, type Gw, HaLab, type Proc } from "./helpers/ha-lab.js";
import type { TrafficSummary } from "./helpers/ha-traffic.js";
import { BIN, missing, sleep } from "./helpers/lab.js";

const TRAFFIC = join(dirname(fileURLToPath(import.meta.url)), "helpers", "ha-traffic.js");
const TCP_PORT = 7000;
const UDP_PORT = 7001;

const reason = missing(["keepalived", "arping", "iperf3"]);
if (reason) t.plan(0, reason);
else {
  const lab = new HaLab("tnha");
  t.teardown(() => lab.down());
  lab.up();
  const events: string[] = [];
  const eventAt: [number, string][] = [];
  const note = (s: string) => {
    events.push(`${new Date().toISOString().slice(11, 23)} ${s}`);
    eventAt.push([Date.now(), s]);
  };

  // Where a stall on every connection at once comes from: each daemon's event-loop delays over
  // 250 ms (tunnat_event_loop_delay_seconds, cumulative), sampled every second while traffic runs.
  const loopStalls: string[] = [];
  const seen: Record<string, number> = {};
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      for (const g of ["ga", "gb"] as const) {
        if (!lab.daemons[g]) continue;
        const r = await lab.exec(
          g,
          ["curl", "-sf", "-m", "1", `http://${A.metrics}/metrics`],
          3000,
        );
        const count = /^tunnat_event_loop_delay_seconds_count (\d+)/m.exec(r.stdout);
        const under = /^tunnat_event_loop_delay_seconds_bucket\{le="0.25"\} (\d+)/m.exec(r.stdout);
        if (!count || !under) continue;
        const over = Number(count[1]) - Number(under[1]);
        const key = `${g}:${lab.daemons[g]?.child.pid}`;
        if (over > (seen[key] ?? 0))
          loopStalls.push(`${new Date().toISOString().slice(11, 23)} ${g} ${over} delays > 250 ms`);
        seen[key] = over;
      }
      await sleep(1000);
    }
  })();
  t.teardown(async () => {
    sampling = false;
    await sampler;
  });
  let server: Proc | undefined;

  const active = async (g: Gw) => lab.waitFor(g, (s) => s.role === "active", 8000);
  const syncedStandby = async (g: Gw, timeoutMs = 10_000) =>
    lab.waitFor(g, (s) => s.role === "standby" && s.synced === true && s.peer === "up", timeoutMs);

  t.test("the pair comes up: ga active (VRRP master), gb a synced standby", async (t) => {
    await lab.startDaemon("ga");
    lab.startKeepalived("ga");
    t.ok(await active("ga"), "ga becomes active through keepalived's notify");
    await lab.startDaemon("gb");
    lab.startKeepalived("gb");
    const s = await syncedStandby("gb");
    t.ok(s, `gb is a synced standby: ${JSON.stringify(s)}`);
    const a = await lab.status("ga");
    t.equal(a?.peer, "up", "ga hears gb");
    const stats = await lab.exec("ga", [
      process.execPath,
      BIN,
      "stats",
      "--socket",
      lab.sock("ga"),
    ]);
    t.match(stats.stdout, /ha:\n(.|\n)*role\s+active/, "tunnat stats shows the ha group");
    const metrics = await lab.exec("gb", ["curl", "-sf", `http://${A.metrics}/metrics`]);
    t.match(metrics.stdout, /tunnat_ha_role\{role="standby"\} 1/, "the role metric");
    t.match(metrics.stdout, /tunnat_ha_synced 1/, "the synced metric");
  });

  let client: Proc | undefined;
  t.test("traffic: 50 TCP connections and 20 UDP mappings through the active", async (t) => {
    const srv = lab.spawn("inet", [
      process.execPath,
      TRAFFIC,
      "server",
      A.inet,
      String(TCP_PORT),
      String(UDP_PORT),
    ]);
    server = srv;
    for (let i = 0; i < 50 && !/ready/.test(srv.out()); i++) await sleep(100);
    t.match(srv.out(), /ready/, "server up");
    client = lab.spawn("p1", [
      process.execPath,
      TRAFFIC,
      "client",
      A.inet,
      String(TCP_PORT),
      String(UDP_PORT),
      "50",
      "20",
      "100",
      "90000",
    ]);
    await sleep(2000);
    const a = await lab.status("ga");
    const b = await lab.waitFor("gb", (s) => Number(s.eventsApplied) >= 70, 5000);
    t.ok(b, `the standby applied the flows' events: ${b?.eventsApplied}`);
    t.ok(Number(a?.eventsSent) >= 70, `the active sent them: ${a?.eventsSent}`);
    const flows = await lab.exec("gb", [
      process.execPath,
      BIN,
      "flows",
      "--json",
      "--socket",
      lab.sock("gb"),
    ]);
    const n = flows.stdout.split("\n").filter((l) => /"type":"flow"/.test(l)).length;
    t.ok(n >= 70, `the standby's table holds the 70 flows (${n})`);
  });

  t.test("a broken sync link leaves one active; the standby resyncs when it is back", async (t) => {
    const before = Number((await lab.status("gb"))?.bulkResyncsReceived);
    note("sync link down");
    await lab.exec("ga", ["ip", "link", "set", "sync0", "down"]);
    const b = await lab.waitFor("gb", (s) => s.peer === "down", 5000);
    t.equal(b?.role, "standby", "gb stays standby: the sync link alone never promotes");
    await sleep(1500);
    t.equal((await lab.status("ga"))?.role, "active", "ga is still the only active");
    t.equal((await lab.status("gb"))?.role, "standby");
    note("sync link up");
    await lab.exec("ga", ["ip", "link", "set", "sync0", "up"]);
    const s = await lab.waitFor(
      "gb",
      (s) => s.synced === true && Number(s.bulkResyncsReceived) > before,
      10_000,
    );
    t.ok(s, `a bulk resync brought gb back in step: ${JSON.stringify(s)}`);
  });

  t.test(
    "a standby that stops reading (SIGSTOP) bounds the active's queue and catches up",
    async (t) => {
      const d = lab.daemons.gb as Proc;
      const before = Number((await lab.status("gb"))?.bulkResyncsReceived);
      note("gb SIGSTOP");
      d.child.kill("SIGSTOP");
      await sleep(2000);
      const a = await lab.status("ga");
      t.equal(a?.peer, "down", "the active sees a silent peer");
      t.equal(a?.queuedMessages, 0, "and keeps nothing queued for it");
      note("gb SIGCONT");
      d.child.kill("SIGCONT");
      const s = await lab.waitFor(
        "gb",
        (s) => s.synced === true && s.peer === "up" && Number(s.bulkResyncsReceived) > before,
        10_000,
      );
      t.ok(s, "gb is in step again after a bulk resync");
    },
  );

  t.test("a standby that restarts gets the table again", async (t) => {
    note("gb restart");
    await lab.kill9("gb");
    await lab.startDaemon("gb");
    const s = await syncedStandby("gb", 15_000);
    t.ok(s, `the restarted gb is a synced standby: ${JSON.stringify(s)}`);
    t.ok(Number(s?.bulkResyncsReceived) >= 1);
  });

  t.test(
    "kill -9 the active: gb takes over; ga comes back as standby and catches up",
    async (t) => {
      note("kill -9 ga");
      await lab.kill9("ga");
      const b = await active("gb");
      note("gb active");
      t.ok(b, "gb becomes active");
      await sleep(2500);
      note("ga restart");
      await lab.startDaemon("ga");
      const a = await syncedStandby("ga", 15_000);
      note("ga synced standby");
      t.ok(a, `ga is a synced standby again: ${JSON.stringify(a)}`);
      t.equal(a?.role, "standby", "nopreempt: ga does not take back the role");
    },
  );

  t.test("kill -9 the new active: ga takes over again", async (t) => {
    note("kill -9 gb");
    await lab.kill9("gb");
    t.ok(await active("ga"), "ga becomes active");
    note("ga active");
    await sleep(3000);
  });

  t.test("every connection went on: none reset, same outside ports, gaps under 2 s", async (t) => {
    const c = client as Proc;
    c.child.kill("SIGTERM");
    await c.exited;
    const line = c
      .out()
      .split("\n")
      .find((l) => l.startsWith("{"));
    t.ok(line, "the client's summary");
    const sum = JSON.parse(line ?? "{}") as TrafficSummary;
    t.equal(sum.connected, 50, "50 connections were made");
    const maxTcp = Math.max(...sum.tcp.map((x) => x.maxGap));
    const maxUdp = Math.max(...sum.udp.map((x) => x.maxGap));
    t.comment(`events: ${events.join(" | ")}`);
    t.comment(`longest gap: TCP ${maxTcp} ms, UDP ${maxUdp} ms`);
    t.comment(`UDP gaps: ${sum.udp.map((x) => `${x.maxGap}@${x.maxGapAt}`).join(" ")}`);
    t.comment(`TCP gaps: ${sum.tcp.map((x) => x.maxGap).join(" ")}`);
    // Stalls of the measuring processes themselves and of the daemons' event loops, to tell a
    // stall of the gateway from one of the client or the server (a loaded 2-core machine).
    const iso = (ms: number) => new Date(ms).toISOString().slice(11, 23);
    t.comment(
      `client stalls: ${sum.stalls.map(([at, ms]) => `${ms}ms@${iso(sum.t0 + at)}`).join(" ")}`,
    );
    const srvStalls = (server?.out() ?? "")
      .split("\n")
      .filter((l) => l.startsWith("stall "))
      .map((l) => {
        const [, ms, at] = l.split(" ");
        return `${ms}ms@${iso(Number(at))}`;
      });
    t.comment(`server stalls: ${srvStalls.join(" ")}`);
    t.comment(`daemon event-loop delays: ${loopStalls.join(" | ")}`);
    // Gaps of 1 s or more on most connections at once: when they began.
    const starts: number[] = [];
    for (const x of [...sum.tcp, ...sum.udp])
      for (const [end, gap] of x.gaps) if (gap >= 1000) starts.push(end - gap);
    starts.sort((x, y) => x - y);
    const bursts: string[] = [];
    for (let i = 0; i < starts.length; ) {
      let j = i;
      while (j < starts.length && (starts[j] as number) - (starts[i] as number) < 500) j++;
      if (j - i >= 35)
        bursts.push(`${j - i} gaps >= 1 s starting ${iso(sum.t0 + (starts[i] as number))}`);
      i = j;
    }
    t.comment(`all-at-once stalls: ${bursts.join(" | ")}`);
    // What each failure cost: per event, the longest UDP gap that began within 3 s after it, and
    // the datagrams (20 sockets, one every 100 ms each) that got no answer in such gaps.
    const cost: Record<string, number> = {};
    for (const [at, what] of eventAt) {
      let worst = 0;
      let lost = 0;
      for (const u of sum.udp)
        for (const [end, gap] of u.gaps) {
          const start = sum.t0 + end - gap;
          if (start >= at - 100 && start <= at + 3000) {
            worst = Math.max(worst, gap);
            lost += Math.max(0, Math.round(gap / 100) - 1);
          }
        }
      cost[what] = worst;
      t.comment(`after "${what}": longest UDP gap ${worst} ms, ~${lost} datagrams unanswered`);
    }
    for (const k of ["kill -9 ga", "kill -9 gb"])
      t.ok((cost[k] ?? 0) <= 2000, `the failover after "${k}" cost at most 2 s: ${cost[k]} ms`);
    t.same(
      sum.tcp.filter((x) => x.errors.length > 0 || x.closed),
      [],
      "no TCP connection was reset or closed",
    );
    t.same(
      sum.tcp.filter((x) => x.ports.length !== 1),
      [],
      "each TCP connection kept its one outside port",
    );
    t.same(
      sum.udp.filter((x) => x.ports.length !== 1),
      [],
      "each UDP mapping kept its one outside port",
    );
    t.ok(
      sum.tcp.every((x) => x.answers > 100),
      "every connection kept exchanging lines",
    );
    t.ok(maxUdp <= 3000, `no UDP mapping went unanswered for 3 s: ${maxUdp} ms`);
    t.ok(
      maxTcp <= 3500,
      `every TCP connection answered again within ${maxTcp} ms (RTO backoff included)`,
    );
  });

  t.test("an iperf3 TCP stream through the active goes on across a failover", async (t) => {
    await lab.startDaemon("gb");
    t.ok(await syncedStandby("gb", 15_000), "gb is a synced standby");
    const srv = lab.spawn("inet", ["iperf3", "-s", "-1", "-B", A.inet]);
    await sleep(500);
    const cli = lab.spawn("p1", ["iperf3", "-c", A.inet, "-t", "8", "-i", "1", "--json"]);
    await sleep(3000);
    note("iperf: kill -9 ga");
    await lab.kill9("ga");
    t.ok(await active("gb"), "gb takes over");
    const code = await cli.exited;
    await srv.stop(500);
    t.equal(code, 0, `iperf3 finished: ${cli.out().slice(-500)}`);
    const j = JSON.parse(cli.out()) as {
      intervals: { sum: { bytes: number } }[];
      end: { sum_received: { bytes: number } };
    };
    const per = j.intervals.map((i) => i.sum.bytes);
    t.comment(`iperf3 bytes per second: ${per.join(" ")}`);
    t.ok(
      per.slice(-2).every((b) => b > 0),
      "bytes flow in the last seconds, after the failover",
    );
    t.ok(j.end.sum_received.bytes > 0);
  });
}
