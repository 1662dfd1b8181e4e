/**
 * Split brain in an HA pair with the keepalived arbiter (src/ha/controller.ts, docs/ha.md), with
 * real sockets, both daemons and both keepalived processes alive throughout. Topology in
 * helpers/ha-lab.ts; both gateways also forward 203.0.113.1:7100 (TCP) and :7101 (UDP) to p1.
 *
 * - The sync link breaks: the standby does not take over and forwards nothing (its packet
 *   counters stand still while the active's grow); when the link is back a bulk resync brings it
 *   in step.
 * - The link keepalived uses (the active's inside port on the switch) breaks: the active's
 *   keepalived goes to FAULT and tunnat stops forwarding before the standby becomes active (the
 *   two transitions' times), so the two never forward at once; every connection, outbound and
 *   inbound through the forward, goes on through the new active with its outside port.
 *
 * Needs root, keepalived, arping, curl. Namespaces `tnhs-<pid>-*`, removed in teardown.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { A, type Gw, HaLab, type Proc } from "./helpers/ha-lab.js";
import type { TrafficSummary, TrafficTrack } from "./helpers/ha-traffic.js";
import { missing, sleep } from "./helpers/lab.js";

const TRAFFIC = join(dirname(fileURLToPath(import.meta.url)), "helpers", "ha-traffic.js");
const FORWARDS = ["--forward", "tcp:7100=10.0.1.2:7100", "--forward", "udp:7101=10.0.1.2:7101"];

const reason = missing(["keepalived", "arping"]);
if (reason) t.plan(0, reason);
else {
  const lab = new HaLab("tnhs");
  t.teardown(() => lab.down());
  lab.up();

  const status = (g: Gw) => lab.status(g);
  /** Packets this gateway sent to the outside (0 when it does not answer). */
  const sentOut = async (g: Gw): Promise<number> => {
    const r = await lab.exec(g, ["curl", "-sf", `http://${A.metrics}/metrics`]);
    const m = /^tunnat_out_to_destination_packets_total (\d+)/m.exec(r.stdout);
    return m ? Number(m[1]) : Number.NaN;
  };
  const alive = (p: Proc | undefined) => p !== undefined && p.child.exitCode === null;
  const iso = (ms: number) => new Date(ms).toISOString().slice(11, 23);
  const events: string[] = [];
  const note = (s: string) => events.push(`${iso(Date.now())} ${s}`);

  let outbound: Proc | undefined;
  let inbound: Proc | undefined;

  t.test("the pair comes up with forwards; traffic both ways", async (t) => {
    await lab.startDaemon("ga", FORWARDS);
    lab.startKeepalived("ga");
    t.ok(await lab.waitFor("ga", (s) => s.role === "active", 8000), "ga active");
    await lab.startDaemon("gb", FORWARDS);
    lab.startKeepalived("gb");
    t.ok(
      await lab.waitFor("gb", (s) => s.role === "standby" && s.synced === true, 10_000),
      "gb a synced standby",
    );
    const inetSrv = lab.spawn("inet", [
      process.execPath,
      TRAFFIC,
      "server",
      A.inet,
      "7000",
      "7001",
    ]);
    const p1Srv = lab.spawn("p1", [process.execPath, TRAFFIC, "server", A.p1, "7100", "7101"]);
    for (let i = 0; i < 50 && !(/ready/.test(inetSrv.out()) && /ready/.test(p1Srv.out())); i++)
      await sleep(100);
    const args = ["10", "5", "100", "120000"];
    outbound = lab.spawn("p1", [
      process.execPath,
      TRAFFIC,
      "client",
      A.inet,
      "7000",
      "7001",
      ...args,
    ]);
    inbound = lab.spawn("inet", [
      process.execPath,
      TRAFFIC,
      "client",
      A.nat,
      "7100",
      "7101",
      "5",
      "5",
      "100",
      "120000",
    ]);
    await sleep(2500);
    const b = await status("gb");
    t.equal(b?.applyFailures, 0, "the standby applied every synced record, the forward's too");
  });

  t.test("the sync link breaks: the standby neither takes over nor forwards", async (t) => {
    const before = Number((await status("gb"))?.bulkResyncsReceived);
    note("sync link down");
    await lab.exec("ga", ["ip", "link", "set", "sync0", "down"]);
    t.ok(await lab.waitFor("gb", (s) => s.peer === "down", 5000), "gb hears nothing");
    const a0 = await sentOut("ga");
    const b0 = await sentOut("gb");
    const roles: string[] = [];
    for (let i = 0; i < 6; i++) {
      const [a, b] = await Promise.all([status("ga"), status("gb")]);
      roles.push(`${a?.role}/${b?.role}`);
      await sleep(300);
    }
    const a1 = await sentOut("ga");
    const b1 = await sentOut("gb");
    t.same([...new Set(roles)], ["active/standby"], `roles while cut: ${roles.join(" ")}`);
    t.ok(a1 > a0, `the active forwards: ${a0} -> ${a1} packets out`);
    t.equal(b1, b0, `the standby forwards nothing: ${b0} -> ${b1} packets out`);
    t.ok(
      alive(lab.daemons.ga) &&
        alive(lab.daemons.gb) &&
        alive(lab.keepalived.ga) &&
        alive(lab.keepalived.gb),
      "both daemons and both keepalived are alive",
    );
    note("sync link up");
    await lab.exec("ga", ["ip", "link", "set", "sync0", "up"]);
    const s = await lab.waitFor(
      "gb",
      (s) => s.synced === true && Number(s.bulkResyncsReceived) > before,
      10_000,
    );
    t.ok(s, "the link back, a bulk resync brings gb in step");
  });

  t.test(
    "the active's inside link breaks: it stops forwarding before the standby takes over",
    async (t) => {
      const b0 = await sentOut("gb");
      note("ga inside link down");
      await lab.exec("sw", ["ip", "link", "set", "ga-in", "down"]);
      const b = await lab.waitFor("gb", (s) => s.role === "active", 8000);
      t.equal(b?.role, "active", "gb takes over (VRRP)");
      const a = await status("ga");
      t.equal(a?.role, "standby", "ga, its keepalived in FAULT, is the standby");
      t.ok(alive(lab.daemons.ga) && alive(lab.keepalived.ga), "ga's daemon and keepalived live on");
      const aAt = Date.parse(String(a?.lastTransition));
      const bAt = Date.parse(String(b?.lastTransition));
      t.ok(
        aAt <= bAt,
        `ga stood down (${a?.lastTransition}) before gb stood up (${b?.lastTransition})`,
      );
      await sleep(3000);
      t.ok((await sentOut("gb")) > b0, "gb forwards");
      note("ga inside link up");
      await lab.exec("sw", ["ip", "link", "set", "ga-in", "up"]);
      t.ok(
        await lab.waitFor("ga", (s) => s.role === "standby" && s.synced === true, 15_000),
        "ga comes back as a synced standby (nopreempt)",
      );
      t.equal((await status("gb"))?.role, "active", "gb stays the one active");
    },
  );

  t.test("every connection went on, the forwarded ones too: none reset, same ports", async (t) => {
    for (const [name, c] of [
      ["outbound", outbound],
      ["inbound through the forward", inbound],
    ] as const) {
      const p = c as Proc;
      p.child.kill("SIGTERM");
      await p.exited;
      const line = p
        .out()
        .split("\n")
        .find((l) => l.startsWith("{"));
      t.ok(line, `${name}: the client's summary`);
      const sum = JSON.parse(line ?? "{}") as TrafficSummary;
      const maxTcp = Math.max(...sum.tcp.map((x) => x.maxGap));
      const maxUdp = Math.max(...sum.udp.map((x) => x.maxGap));
      t.comment(
        `${name}: longest gap TCP ${maxTcp} ms, UDP ${maxUdp} ms; events: ${events.join(" | ")}`,
      );
      const at = (x: TrafficTrack) => `${x.maxGap}@${iso(sum.t0 + x.maxGapAt - x.maxGap)}`;
      t.comment(`${name}: longest gaps (began at): ${[...sum.tcp, ...sum.udp].map(at).join(" ")}`);
      t.comment(
        `${name}: client stalls: ${sum.stalls.map(([a, ms]) => `${ms}@${iso(sum.t0 + a)}`).join(" ")}`,
      );
      t.same(
        sum.tcp.filter((x) => x.errors.length > 0 || x.closed),
        [],
        `${name}: no TCP connection was reset or closed`,
      );
      t.same(
        [...sum.tcp, ...sum.udp].filter((x) => x.ports.length !== 1),
        [],
        `${name}: each connection and socket kept its one port`,
      );
      t.ok(
        sum.tcp.every((x) => x.answers > 50),
        `${name}: every connection kept exchanging lines`,
      );
      // The gaps are printed above, not asserted: a time bound in a test measures the machine
      // (one run on a loaded 2-core VM saw 7.3 s with no failover going on).
    }
  });
}
