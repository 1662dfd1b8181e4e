// The table state file (control/table-state.ts): saved and loaded across a restart, refused with
// a reason when it is short, foreign, corrupt, of another version or another configuration,
// and never a crash: thousands of truncated, bit-flipped, random and re-checksummed files.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { Prng } from "../../../src/conntrack/hash.js";
import { FlowTable, Proto } from "../../../src/conntrack/table.js";
import { TcpFlag } from "../../../src/conntrack/tcp-state.js";
import {
  checkpointTableState,
  FORMAT_VERSION,
  HEADER_BYTES,
  loadTableState,
  parseStateFile,
  saveTableState,
} from "../../../src/control/table-state.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";

const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const S1 = ip("203.0.113.10");
const WALL = 1_800_000_000_000;

function cfg(over: Partial<NatConfig> = {}): NatConfig {
  return defaultNatConfig({
    natAddresses: [ip("198.51.100.1")],
    inside: [{ addr: ip("10.0.0.0"), len: 16 }],
    maxFlows: 2048,
    ...over,
  });
}

function filled(nat: NatConfig, n: number, now: number) {
  const stats = new NatStats();
  const table = new FlowTable(nat, stats);
  const rng = new Prng(5);
  for (let i = 0; i < n; i++) {
    const tcp = i % 2 === 0;
    const proto = tcp ? Proto.TCP : Proto.UDP;
    const h = ip("10.0.1.0") + (i % 50);
    const port = 1024 + rng.below(60000);
    const rport = tcp ? 443 : 53;
    if (table.lookupInside(proto, h, port, S1 + (i % 7), rport, now) >= 0) continue;
    const f = table.createOutbound(proto, h, port, S1 + (i % 7), rport, now);
    if (f < 0) continue;
    if (tcp) table.tcpUpdate(f, TcpFlag.SYN, true, now);
    table.addOut(f, 1, 64);
  }
  // A few freed ports resting, a few drops counted.
  let k = 0;
  table.forEach((f) => {
    if (k++ % 10 === 0) table.remove(f, now);
  });
  stats.drops[3] = 17;
  return { table, stats };
}

const dir = mkdtempSync(join(tmpdir(), "tunnat-table-state-"));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test("save then load gives the same flows; the file is 0600 and replaced whole", async (t) => {
  const nat = cfg();
  const a = filled(nat, 300, 1000);
  const file = join(dir, "a.state");
  const s = saveTableState({ file, table: a.table, stats: a.stats, nat, now: 1000, wallMs: WALL });
  t.equal(s.flows, a.table.active);
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.equal(statSync(file).size, s.bytes);
  const b = { stats: new NatStats(), table: new FlowTable(nat, new NatStats()) };
  b.table = new FlowTable(nat, b.stats);
  const r = loadTableState({
    file,
    table: b.table,
    stats: b.stats,
    nat,
    now: 50,
    wallMs: WALL + 2500,
  });
  if (r.kind !== "restored") throw new Error(JSON.stringify(r));
  t.equal(r.report.flows, a.table.active);
  t.equal(r.elapsed, 2.5);
  t.equal(b.table.active, a.table.active);
  t.equal(b.stats.drops[3], 17);
  t.ok(r.report.restingPorts > 0, "resting ports saved");
});

t.test("no file is a first start, not a refusal", async (t) => {
  const nat = cfg();
  const r = loadTableState({
    file: join(dir, "missing.state"),
    table: new FlowTable(nat, new NatStats()),
    stats: new NatStats(),
    nat,
    now: 0,
    wallMs: WALL,
  });
  t.same(r, { kind: "none" });
});

t.test("a file from another configuration is refused and says what differs", async (t) => {
  const nat = cfg();
  const a = filled(nat, 20, 1000);
  const file = join(dir, "b.state");
  saveTableState({ file, table: a.table, stats: a.stats, nat, now: 1000, wallMs: WALL });
  const other = cfg({ natAddresses: [ip("198.51.100.9")], portLo: 1024 });
  const table = new FlowTable(other, new NatStats());
  const r = loadTableState({
    file,
    table,
    stats: new NatStats(),
    nat: other,
    now: 0,
    wallMs: WALL,
  });
  t.equal(r.kind, "refused");
  if (r.kind !== "refused") return;
  t.match(r.why, /another configuration/);
  t.match(r.why, /natAddresses \["198\.51\.100\.1"\] -> \["198\.51\.100\.9"\]/);
  t.match(r.why, /ports "1-65535" -> "1024-65535"/);
  t.equal(table.active, 0);
  const modes = cfg({ mapping: "per-destination" });
  const r2 = loadTableState({
    file,
    table: new FlowTable(modes, new NatStats()),
    stats: new NatStats(),
    nat: modes,
    now: 0,
    wallMs: WALL,
  });
  t.match(
    r2.kind === "refused" ? r2.why : "",
    /mapping "endpoint-independent" -> "per-destination"/,
  );
});

t.test("each kind of bad file is refused with its own reason", async (t) => {
  const nat = cfg();
  const a = filled(nat, 50, 1000);
  const file = join(dir, "c.state");
  saveTableState({ file, table: a.table, stats: a.stats, nat, now: 1000, wallMs: WALL });
  const good = new Uint8Array(readFileSync(file));
  const why = (b: Uint8Array) => {
    const p = parseStateFile(b, nat);
    return typeof p === "string" ? p : "accepted";
  };
  t.equal(why(good), "accepted");
  t.match(why(good.subarray(0, 10)), /^truncated: 10 bytes/);
  t.match(why(good.subarray(0, good.byteLength - 1)), /^truncated: the header announces/);
  const junk = new Uint8Array(good.byteLength + 3);
  junk.set(good);
  t.match(why(junk), /bytes after the end/);
  const magic = Uint8Array.from(good);
  magic[0] = 0x41;
  t.match(why(magic), /wrong magic/);
  const newer = Uint8Array.from(good);
  new DataView(newer.buffer).setUint32(8, FORMAT_VERSION + 1, true);
  t.match(
    why(newer),
    /format version 2, this tunnat reads version 1 \(written by a newer tunnat\)/,
  );
  const flipped = Uint8Array.from(good);
  flipped[HEADER_BYTES + 200] ^= 0x10;
  t.match(why(flipped), /checksum does not match/);
  const saved = new DataView(good.buffer, good.byteOffset).getFloat64(16, true);
  t.equal(saved, WALL, "the save time is the injected wall clock's");
});

t.test("a wall clock that went back restores with no time passed", async (t) => {
  const nat = cfg();
  const a = filled(nat, 10, 1000);
  const file = join(dir, "d.state");
  saveTableState({ file, table: a.table, stats: a.stats, nat, now: 1000, wallMs: WALL });
  const table = new FlowTable(nat, new NatStats());
  const r = loadTableState({
    file,
    table,
    stats: new NatStats(),
    nat,
    now: 1,
    wallMs: WALL - 60_000,
  });
  t.equal(r.kind === "restored" && r.clockWentBack && r.elapsed === 0, true);
});

t.test("a checkpoint taken in slices while the table changes loads like a save", async (t) => {
  const nat = cfg({ maxFlows: 200_000 });
  const a = filled(nat, 100_000, 1000);
  const file = join(dir, "e.state");
  // Change the table while the checkpoint is under way (between its slices).
  let churn = 0;
  const timer = setInterval(() => {
    const f = a.table.createOutbound(Proto.UDP, ip("10.0.9.9"), 10000 + churn++, S1, 53, 1000);
    if (f >= 0 && churn % 2 === 0) a.table.remove(f, 1000);
  }, 0);
  const s = await checkpointTableState({
    file,
    table: a.table,
    stats: a.stats,
    nat,
    now: 1000,
    wallMs: WALL,
  });
  clearInterval(timer);
  t.ok(
    s.slices > 1,
    `${s.slices} slices, longest ${s.maxSliceMs.toFixed(1)} ms, ${s.ms.toFixed(0)} ms in all`,
  );
  const b = new NatStats();
  const table = new FlowTable(nat, b);
  const r = loadTableState({ file, table, stats: b, nat, now: 1000, wallMs: WALL });
  if (r.kind !== "restored") throw new Error(JSON.stringify(r));
  t.equal(r.report.flows, s.flows);
  t.ok(s.flows >= 80_000, `${s.flows} flows`);
});

/** Recompute the checksum of a (mutated) file, so the body parser itself is what gets tested. */
function resign(b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const fpLen = v.getUint32(12, true);
  if (HEADER_BYTES + fpLen > b.byteLength) return;
  const h = createHash("sha256");
  h.update(b.subarray(HEADER_BYTES, HEADER_BYTES + fpLen));
  h.update(b.subarray(HEADER_BYTES + fpLen));
  h.update(b.subarray(0, 40));
  b.set(h.digest(), 40);
}

t.test("the loader never throws and never leaves a broken table (fuzz)", async (t) => {
  const nat = cfg({ maxFlows: 1024, filtering: "address-dependent" });
  const a = filled(nat, 120, 1000);
  const file = join(dir, "f.state");
  saveTableState({ file, table: a.table, stats: a.stats, nat, now: 1000, wallMs: WALL });
  const good = new Uint8Array(readFileSync(file));
  const fpLen = new DataView(good.buffer, good.byteOffset).getUint32(12, true);
  const bodyStart = HEADER_BYTES + fpLen;
  const rng = new Prng(20261201);
  const counts = { restored: 0, refused: 0 };
  const reasons = new Set<string>();
  const CASES = 4000;
  let fresh: { stats: NatStats; table: FlowTable; used: boolean } | null = null;
  for (let i = 0; i < CASES; i++) {
    let b: Uint8Array;
    const kind = i % 5;
    if (kind === 0) {
      b = good.slice(0, rng.below(good.byteLength)); // truncated
    } else if (kind === 1) {
      b = Uint8Array.from(good); // bit flips anywhere
      for (let k = 1 + rng.below(4); k > 0; k--) {
        const at = rng.below(b.byteLength);
        b[at] = (b[at] ?? 0) ^ (1 << rng.below(8));
      }
    } else if (kind === 2) {
      b = new Uint8Array(rng.below(4096)); // random bytes, sometimes behind a good header
      for (let k = 0; k < b.length; k++) b[k] = rng.below(256);
      if (rng.below(2) === 0 && b.length > bodyStart) b.set(good.subarray(0, bodyStart));
    } else {
      // Bit flips, random words or a cut inside the body, then re-checksummed and re-lengthed.
      b = Uint8Array.from(good);
      const n = 1 + rng.below(kind === 3 ? 8 : 64);
      for (let k = 0; k < n; k++) {
        const at = bodyStart + rng.below(b.byteLength - bodyStart);
        if (kind === 3) b[at] = (b[at] ?? 0) ^ (1 << rng.below(8));
        else b[at] = rng.below(256);
      }
      if (rng.below(4) === 0) b = b.slice(0, bodyStart + rng.below(b.byteLength - bodyStart));
      const v = new DataView(b.buffer);
      v.setUint32(24, b.byteLength - bodyStart, true);
      resign(b);
    }
    // A refused load leaves the table untouched, so it is reused (building one costs ~5 ms).
    if (fresh === null || fresh.table.active !== 0 || fresh.used) {
      const st = new NatStats();
      fresh = { stats: st, table: new FlowTable(nat, st), used: false };
    }
    const { stats, table } = fresh;
    let r: ReturnType<typeof loadTableState>;
    try {
      r = loadTableState({
        file: "x",
        readFile: () => b,
        table,
        stats,
        nat,
        now: 1000,
        wallMs: WALL + rng.below(400_000),
      });
    } catch (e) {
      t.fail(`case ${i} (kind ${kind}) threw: ${String(e)}`);
      continue;
    }
    counts[r.kind === "restored" ? "restored" : "refused"]++;
    if (r.kind === "refused") {
      reasons.add(r.why.replace(/[0-9]+/g, "N").slice(0, 40));
      if (table.active !== 0)
        t.fail(`case ${i}: refused but the table holds ${table.active} flows`);
      continue;
    }
    fresh.used = true;
    // A restored table must be one the packet path can use: every flow is found both ways.
    let live = 0;
    let bad = 0;
    table.forEach((f) => {
      live++;
      const p = table.proto(f);
      const ra = table.raddr(f);
      const rp = table.rport(f);
      if (table.lookupInside(p, table.iaddr(f), table.iport(f), ra, rp, 1000) !== f) bad++;
      else if (table.lookupOutside(p, table.oaddr(f), table.oport(f), ra, rp, 1000) !== f) bad++;
    });
    if (live !== table.active || bad > 0)
      t.fail(`case ${i}: ${bad} flows not found, ${live}/${table.active}`);
    // And it keeps working: new flows, a sweep of everything.
    table.createOutbound(Proto.UDP, ip("10.0.5.5"), 5555, S1, 53, 1000);
    table.sweep(1000 + 30 * 86400 + 1, table.capacity);
    if (table.active !== 0) t.fail(`case ${i}: ${table.active} flows left after the sweep`);
  }
  t.ok(counts.refused > CASES / 2, `${counts.refused} refused, ${counts.restored} restored`);
  t.ok(counts.restored > 100, "re-checksummed bodies reach the record parser");
  t.ok(reasons.size >= 5, `reasons seen: ${[...reasons].join(" | ")}`);
});

t.test("an unreadable file is refused, not thrown", async (t) => {
  const nat = cfg();
  const d = join(dir, "a-directory.state");
  writeFileSync(join(dir, "x"), "");
  rmSync(join(dir, "x"));
  const { mkdirSync } = await import("node:fs");
  mkdirSync(d);
  const r = loadTableState({
    file: d,
    table: new FlowTable(nat, new NatStats()),
    stats: new NatStats(),
    nat,
    now: 0,
    wallMs: WALL,
  });
  t.equal(r.kind, "refused");
  t.match(r.kind === "refused" ? r.why : "", /cannot read it \(EISDIR\)/);
});
