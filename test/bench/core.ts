/**
 * `npm run bench:core`: packets translated per second in-process, one core, at 1 k, 100 k and
 * 1 M established flows, plus the connection table's bytes per flow.
 *
 * Each round translates a sample of flows' outbound packets and then their replies inbound (so both
 * indexes are exercised), from an arena restored with one copy per round. The sample is drawn at
 * random from all flows, so at 1 M flows lookups miss the CPU caches as they would in service.
 * Checksums are verified once on a sample, so a fast but wrong core cannot pass unnoticed.
 */
import { ManualClock } from "../../src/conntrack/clock.js";
import { defaultNatConfig } from "../../src/nat/config.js";
import { NatStats } from "../../src/nat/stats.js";
import { Translator, Verdict } from "../../src/nat/translate.js";
import { checksumsOk } from "../helpers/checker.js";
import { build, ip } from "../helpers/packet.js";

const SLOT = 128;

function tableBytes(obj: unknown): number {
  const seen = new Set<unknown>();
  let total = 0;
  const walk = (o: unknown, depth: number): void => {
    if (o === null || typeof o !== "object" || seen.has(o) || depth > 4) return;
    seen.add(o);
    if (ArrayBuffer.isView(o)) {
      if (!seen.has(o.buffer)) {
        seen.add(o.buffer);
        total += o.buffer.byteLength;
      }
      return;
    }
    for (const v of Object.values(o as Record<string, unknown>)) walk(v, depth + 1);
  };
  walk(obj, 0);
  return total;
}

interface Result {
  flows: number;
  pps: number;
  bytesPerFlow: number;
}

/** Flow i: inside 10.0.0.1:(1024 + i % PORTS) to 192.0.2.10:(1 + i / PORTS); one NAT address. */
const PORTS = 1000;
const sportOf = (i: number) => 1024 + (i % PORTS);
const dportOf = (i: number) => 1 + Math.floor(i / PORTS);

function bench(flows: number, seconds: number): Result {
  const clock = new ManualClock();
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [ip("100.64.0.1")],
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: Math.max(1024, Math.ceil(flows * 1.05)),
  });
  const nat = new Translator(cfg, clock, stats);
  const scratch = new Uint8Array(SLOT);
  let opened = 0;
  for (let i = 0; i < flows; i++) {
    const out = build({
      src: "10.0.0.1",
      dst: "192.0.2.10",
      proto: "udp",
      sport: sportOf(i),
      dport: dportOf(i),
      payload: new Uint8Array(18),
    });
    scratch.set(out);
    if (nat.process(scratch, 0, out.length) === Verdict.Forward) opened++;
  }
  if (opened !== flows) throw new Error(`opened ${opened} of ${flows} flows`);
  // Sample flows for the timed loop: outbound packet and its inbound reply per flow.
  const sample = Math.min(flows, 32768);
  const arena = new Uint8Array(sample * 2 * SLOT);
  const lens = new Int32Array(sample * 2);
  let seed = 0x9e3779b9;
  for (let k = 0; k < sample; k++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    const i = flows === sample ? k : seed % flows;
    const out = build({
      src: "10.0.0.1",
      dst: "192.0.2.10",
      proto: "udp",
      sport: sportOf(i),
      dport: dportOf(i),
      payload: new Uint8Array(18),
    });
    arena.set(out, 2 * k * SLOT);
    lens[2 * k] = out.length;
    // Translate once to learn the outside endpoint, then build the reply.
    scratch.set(out);
    nat.process(scratch, 0, out.length);
    const dv = new DataView(scratch.buffer);
    const oaddr = dv.getUint32(12);
    const oport = dv.getUint16(20);
    const a = `${oaddr >>> 24}.${(oaddr >>> 16) & 255}.${(oaddr >>> 8) & 255}.${oaddr & 255}`;
    const back = build({
      src: "192.0.2.10",
      dst: a,
      proto: "udp",
      sport: dportOf(i),
      dport: oport,
      payload: new Uint8Array(18),
    });
    arena.set(back, (2 * k + 1) * SLOT);
    lens[2 * k + 1] = back.length;
  }
  const pristine = arena.slice();
  // Verify a sample translates correctly before timing.
  for (let k = 0; k < Math.min(sample * 2, 512); k++) {
    const v = nat.process(arena, k * SLOT, lens[k]!);
    if (v !== Verdict.Forward)
      throw new Error(`sample packet ${k} not forwarded (drop ${nat.lastDrop})`);
    const c = checksumsOk(arena.subarray(k * SLOT, k * SLOT + lens[k]!), 0, { vnet: false });
    if (!c.ok) throw new Error(`sample packet ${k}: ${c.why}`);
  }
  arena.set(pristine);
  const n = sample * 2;
  let packets = 0;
  const t0 = process.hrtime.bigint();
  const deadline = t0 + BigInt(Math.round(seconds * 1e9));
  let dropped = 0;
  while (process.hrtime.bigint() < deadline) {
    for (let k = 0; k < n; k++) {
      if (nat.process(arena, k * SLOT, lens[k]!) !== Verdict.Forward) dropped++;
    }
    packets += n;
    arena.set(pristine);
  }
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  if (dropped) throw new Error(`${dropped} packets dropped in the timed loop`);
  return { flows, pps: packets / dt, bytesPerFlow: tableBytes(nat.table) / cfg.maxFlows };
}

const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const sizes = (process.env.BENCH_FLOWS ?? "1000,100000,1000000").split(",").map(Number);
bench(1000, 0.5); // warm up the JIT
const results: Result[] = [];
for (const f of sizes) {
  const r = bench(f, seconds);
  results.push(r);
  console.log(
    `flows=${String(f).padStart(8)}  ${(r.pps / 1e6).toFixed(2)} Mpps  table ${r.bytesPerFlow.toFixed(1)} bytes/flow`,
  );
}
const first = results[0]!;
const last = results[results.length - 1]!;
console.log(
  `slowdown ${first.flows} -> ${last.flows} flows: ${(first.pps / last.pps).toFixed(2)}x`,
);
