import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import type { ControlSettings } from "../../../src/control/config.js";
import { MappingLog, openMappingLog } from "../../../src/control/mapping-log.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

const NAT = "203.0.113.1";
const SRV = "203.0.113.10";
const WALL = Date.UTC(2025, 0, 2, 3, 4, 5);

function rig(log: MappingLog, over: Partial<NatConfig> = {}) {
  const clock = new ManualClock();
  const tr = newTranslator(
    defaultNatConfig({
      natAddresses: [ip(NAT)],
      inside: [{ addr: ip("10.0.0.0"), len: 8 }],
      maxFlows: 1024,
      hashSeed: 9,
      ...over,
    }),
    clock,
    new NatStats(),
    log.hooks,
  );
  const slot = new Uint8Array(65600);
  const send = (spec: Parameters<typeof build>[0]) => {
    const b = build(spec);
    slot.set(b, 0);
    return tr.process(slot, 0, b.length);
  };
  return { clock, tr, send, now: () => Math.floor(clock.now() / 1000) };
}

function sink() {
  const s = new PassThrough();
  let text = "";
  let writes = 0;
  s.on("data", (b: Buffer) => {
    text += b.toString();
    writes++;
  });
  return {
    s,
    lines: () =>
      text
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
    writes: () => writes,
  };
}

t.test(
  "five UDP flows give five create lines, then remove lines with duration and bytes",
  async (t) => {
    const out = sink();
    const log = new MappingLog({
      sink: out.s,
      ownsSink: false,
      destinations: false,
      wallClock: () => WALL,
    });
    const r = rig(log);
    for (let i = 0; i < 5; i++)
      r.send({
        src: "10.0.1.2",
        dst: SRV,
        proto: "udp",
        sport: 40000 + i,
        dport: 5000,
        payload: "12345678",
      });
    // A second flow of the same mapping (another destination) logs nothing new (RFC 4787 EIM).
    r.send({ src: "10.0.1.2", dst: "203.0.113.11", proto: "udp", sport: 40000, dport: 5000 });
    log.flush();
    await new Promise((res) => setImmediate(res));
    const created = out.lines();
    t.equal(created.length, 5);
    t.same(
      created.map((l) => l.inside),
      [0, 1, 2, 3, 4].map((i) => `10.0.1.2:${40000 + i}`),
    );
    for (const l of created) {
      t.equal(l.event, "create");
      t.equal(l.proto, "udp");
      t.equal(l.time, "2025-01-02T03:04:05.000Z");
      t.match(l.outside, /^203\.0\.113\.1:\d+$/);
      t.notOk("destination" in l, "destinations are left out by default (RFC 6888 REQ-12)");
    }
    r.clock.advanceSeconds(301);
    r.tr.sweep(1024);
    log.flush();
    await new Promise((res) => setImmediate(res));
    const removed = out.lines().slice(5);
    t.equal(removed.length, 5);
    for (const l of removed) {
      t.equal(l.event, "remove");
      t.equal(l.duration, 301);
      t.equal(l.bytesIn, 0);
    }
    // Mapping of port 40000 carried two flows: 36 + 28 bytes; the others 36.
    t.same(removed.map((l) => [l.inside, l.bytesOut]).sort(), [
      ["10.0.1.2:40000", 64],
      ["10.0.1.2:40001", 36],
      ["10.0.1.2:40002", 36],
      ["10.0.1.2:40003", 36],
      ["10.0.1.2:40004", 36],
    ]);
    t.same(
      removed.map((l) => l.outside).sort(),
      created.map((l) => l.outside).sort(),
      "each remove names the outside address:port of its create",
    );
  },
);

t.test("destinations are logged when asked for", async (t) => {
  const out = sink();
  const log = new MappingLog({ sink: out.s, ownsSink: false, destinations: true });
  const r = rig(log);
  r.send({ src: "10.0.1.2", dst: SRV, proto: "tcp", sport: 5555, dport: 443, flags: 0x02 });
  log.flush();
  await new Promise((res) => setImmediate(res));
  t.equal(out.lines()[0]?.destination, `${SRV}:443`);
  t.equal(out.lines()[0]?.proto, "tcp");
});

t.test("lines are buffered: many mappings cost one write", async (t) => {
  const out = sink();
  const log = new MappingLog({ sink: out.s, ownsSink: false, destinations: false });
  const r = rig(log);
  for (let i = 0; i < 100; i++)
    r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 20000 + i, dport: 53 });
  await new Promise((res) => setImmediate(res));
  t.equal(out.writes(), 0, "nothing written synchronously");
  await new Promise((res) => setTimeout(res, 300));
  t.equal(out.writes(), 1, "one write after the flush interval");
  t.equal(out.lines().length, 100);
  t.equal(log.lines, 100);
});

t.test("closing removes and logs every live mapping, marked shutdown", async (t) => {
  const out = sink();
  const log = new MappingLog({ sink: out.s, ownsSink: false, destinations: false });
  const r = rig(log);
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 1111, dport: 53 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "icmp", icmpId: 9 });
  r.clock.advanceSeconds(7);
  await log.close(r.tr.table, r.now());
  await new Promise((res) => setImmediate(res));
  const lines = out.lines();
  t.equal(lines.length, 4);
  const rm = lines.filter((l) => l.event === "remove");
  t.same(rm.map((l) => l.inside).sort(), ["10.0.1.2:1111", "10.0.1.3:9"]);
  for (const l of rm) {
    t.equal(l.reason, "shutdown");
    t.equal(l.duration, 7);
  }
  t.equal(r.tr.table.active, 0);
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 2222, dport: 53 });
  log.flush();
  t.equal(log.dropped, 1, "a line after close is dropped, not written");
});

t.test("a file destination is appended to; a bad path fails at start", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tunnat-maplog-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "map.log");
  const settings = (path: string) =>
    ({ mappingLog: { kind: "file", path }, logDestinations: false }) as unknown as ControlSettings;
  const log = openMappingLog(settings(file));
  if (!log) throw new Error("no log");
  const r = rig(log);
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 3333, dport: 53 });
  await log.close(r.tr.table, r.now());
  const lines = readFileSync(file, "utf8").trim().split("\n");
  t.equal(lines.length, 2);
  t.match(JSON.parse(lines[0] ?? "{}"), { event: "create", inside: "10.0.1.2:3333" });
  t.throws(() => openMappingLog(settings(join(dir, "no", "such", "dir", "x.log"))), {
    code: "TUNNAT_ERR_CONTROL",
    message: /ENOENT/,
  });
  t.equal(openMappingLog({ mappingLog: { kind: "off" } } as unknown as ControlSettings), undefined);
});
