/**
 * The control socket's flows filters on destination and outside address:port, delete (conntrack
 * -D) and follow (conntrack -E, with a bounded ring that tells a slow reader what it missed),
 * against a real Translator and a real unix socket.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { request, stream } from "../../../src/control/control-client.js";
import { type ControlSource, startControlSocket } from "../../../src/control/control-socket.js";
import { FlowEvents } from "../../../src/control/flow-events.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

const NAT = "203.0.113.1";
const SRV = "203.0.113.10";
const SRV2 = "203.0.113.11";

function rig(ringSize?: number) {
  const clock = new ManualClock();
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [ip(NAT)],
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: 4096,
    hashSeed: 3,
  });
  const events = new FlowEvents(cfg.maxFlows, ringSize, () => Math.floor(clock.now() / 1000));
  const tr = newTranslator(cfg, clock, stats, events.hooks);
  events.attach(tr.table);
  const slot = new Uint8Array(65600);
  const send = (spec: Parameters<typeof build>[0]) => {
    const b = build(spec);
    slot.set(b, 0);
    return tr.process(slot, 0, b.length);
  };
  const src: ControlSource = {
    table: tr.table,
    nowSec: () => Math.floor(clock.now() / 1000),
    stats: () => ({}),
    events,
    wallMs: () => Date.UTC(2026, 0, 2, 14, 2, 0),
  };
  return { clock, stats, tr, send, src, events };
}

async function serve(
  t: { teardown(fn: () => Promise<void>): void },
  src: ControlSource,
): Promise<string> {
  const d = mkdtempSync(join(tmpdir(), "tunnat-fc-"));
  const path = join(d, "ctl.sock");
  const srv = await startControlSocket(path, src);
  t.teardown(async () => {
    await srv.close();
    rmSync(d, { recursive: true, force: true });
  });
  return path;
}

async function list(path: string, req: Record<string, unknown> = {}, cmd = "flows") {
  const flows: Record<string, unknown>[] = [];
  let end: Record<string, unknown> = {};
  await request(path, { cmd, ...req } as never, (o) => {
    if (o.type === "flow") flows.push(o);
    else end = o;
  });
  return { flows, end };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test("filters on the destination and on the outside address:port", async (t) => {
  const r = rig();
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  r.send({ src: "10.0.1.3", dst: SRV2, proto: "udp", sport: 4001, dport: 123 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "tcp", sport: 5001, dport: 443, flags: 0x02 });
  const path = await serve(t, r.src);
  t.equal((await list(path, { dst: SRV })).flows.length, 2);
  t.equal((await list(path, { dst: `${SRV}:443` })).flows.length, 1);
  t.equal((await list(path, { dst: `${SRV2}:53` })).flows.length, 0);
  // The abuse-report question: which inside host was NAT:port?
  const all = (await list(path)).flows;
  const target = all.find((f) => f.insidePort === 4001);
  const who = await list(path, { nat: `${NAT}:${String(target?.outsidePort)}` });
  t.same(
    who.flows.map((f) => `${String(f.insideAddr)}:${String(f.insidePort)}`),
    ["10.0.1.3:4001"],
  );
  t.equal((await list(path, { nat: NAT })).flows.length, 3);
  t.equal((await list(path, { nat: "198.51.100.1" })).flows.length, 0);
  await t.rejects(list(path, { nat: "1.2.3.4:99999" }), { message: /bad nat "1\.2\.3\.4:99999"/ });
  await t.rejects(list(path, { dst: "x" }), { message: /bad dst "x"/ });
  t.ok(
    all.every((f) => typeof f.age === "number"),
    "each flow has its age",
  );
});

t.test("delete removes the matching flows and their ports rest as after expiry", async (t) => {
  const r = rig();
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  r.send({ src: "10.0.1.2", dst: SRV2, proto: "udp", sport: 4002, dport: 53 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "udp", sport: 4001, dport: 53 });
  const path = await serve(t, r.src);
  const before = (await list(path, { host: "10.0.1.2" })).flows;
  const oport = Number(before[0]?.outsidePort);
  await t.rejects(list(path, {}, "delete"), { message: /delete needs host, dst or nat/ });
  const d = await list(path, { host: "10.0.1.2" }, "delete");
  t.same(d.end, { type: "end", matched: 2, deleted: 2 });
  t.same(
    (await list(path)).flows.map((f) => f.insideAddr),
    ["10.0.1.3"],
    "the other host stays",
  );
  t.equal(r.tr.table.active, 1);
  t.notOk(r.tr.table.hasMapping(17, ip(NAT), oport), "the mapping is gone");
  // The same inside endpoint again: its old outside port is resting, so it gets another.
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  const again = (await list(path, { host: "10.0.1.2" })).flows;
  t.not(Number(again[0]?.outsidePort), oport, "the deleted flow's port is not reused at once");
  const all = await list(path, { all: true }, "delete");
  t.equal(all.end.deleted, 2);
  t.equal(r.tr.table.active, 0);
});

t.test("follow streams new and destroy events, filtered", async (t) => {
  const r = rig();
  const path = await serve(t, r.src);
  const got: Record<string, unknown>[] = [];
  const ac = new AbortController();
  const done = stream(path, { cmd: "follow", host: "10.0.1.2" }, (o) => got.push(o), ac.signal);
  for (let i = 0; i < 50 && got.length === 0; i++) await sleep(10);
  t.same(got[0], { type: "following" });
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "udp", sport: 4001, dport: 53 });
  r.clock.advanceSeconds(20);
  await list(path, { host: "10.0.1.2" }, "delete");
  for (let i = 0; i < 100 && got.length < 3; i++) await sleep(20);
  ac.abort();
  await done;
  const ev = got.filter((o) => o.type === "event");
  t.same(
    ev.map((e) => `${String(e.event)} ${String(e.insideAddr)}:${String(e.insidePort)}`),
    ["new 10.0.1.2:4000", "destroy 10.0.1.2:4000"],
    "only the filtered host's events, in order",
  );
  t.match(ev[0], { proto: "udp", remoteAddr: SRV, remotePort: 53, outsideAddr: NAT });
  t.match(ev[1], { lifetime: 20, pktsOut: 1 });
  t.match(String(ev[0]?.time), /^2026-01-02T14:01:/, "a wall-clock time");
});

t.test("a follower that falls behind the ring is told how many events it missed", async (t) => {
  const r = rig(16);
  const path = await serve(t, r.src);
  const got: Record<string, unknown>[] = [];
  const ac = new AbortController();
  const done = stream(path, { cmd: "follow" }, (o) => got.push(o), ac.signal);
  for (let i = 0; i < 50 && got.length === 0; i++) await sleep(10);
  // 40 creates between two drains: the ring holds 16.
  for (let i = 0; i < 40; i++)
    r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 5000 + i, dport: 53 });
  for (let i = 0; i < 100 && got.filter((o) => o.type === "event").length < 16; i++)
    await sleep(20);
  ac.abort();
  await done;
  t.same(
    got.find((o) => o.type === "lost"),
    { type: "lost", count: 24 },
  );
  t.equal(got.filter((o) => o.type === "event").length, 16, "the newest 16 arrive");
  t.equal(r.events.seq, 40);
});

t.test("the event ring does not allocate per event: its arrays are fixed", async (t) => {
  const e = new FlowEvents(1024, 8);
  const before = e.created;
  t.equal(e.capacity, 8);
  t.equal(before.length, 1024);
  // read() on an empty ring returns the cursor unchanged.
  t.same(
    e.read(0, 10, () => t.fail("no events")),
    { cursor: 0, missed: 0 },
  );
});
