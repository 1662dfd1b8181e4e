/**
 * `node dist/test/bench/state.js [flows...]`: what the table state file costs at 100 k and 1 M
 * flows (issue 12): the save at SIGTERM (one go), the periodic checkpoint (sliced, with the
 * longest event-loop stall a 1 ms timer saw while it ran: what a packet batch may wait), the
 * restore at start, and the file size. Writes into a temporary directory it removes.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Prng } from "../../src/conntrack/hash.js";
import { FlowTable, Proto } from "../../src/conntrack/table.js";
import { TcpFlag } from "../../src/conntrack/tcp-state.js";
import {
  checkpointTableState,
  loadTableState,
  saveTableState,
} from "../../src/control/table-state.js";
import { defaultNatConfig } from "../../src/nat/config.js";
import { NatStats } from "../../src/nat/stats.js";

const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const NOW = 10_000;

async function run(n: number, dir: string): Promise<void> {
  const nat = defaultNatConfig({
    natAddresses: Array.from({ length: 16 }, (_, i) => ip("198.51.100.1") + i),
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: Math.ceil(n * 1.25),
  });
  const stats = new NatStats();
  const table = new FlowTable(nat, stats);
  const rng = new Prng(1);
  const t0 = performance.now();
  for (let i = 0; table.active < n && i < n * 2; i++) {
    const tcp = (i & 1) === 0;
    const proto = tcp ? Proto.TCP : Proto.UDP;
    const h = ip("10.0.0.0") + 1 + rng.below(60000);
    const ipt = 1024 + rng.below(60000);
    const r = ip("203.0.113.0") + rng.below(250);
    const rp = tcp ? 443 : 53;
    if (table.lookupInside(proto, h, ipt, r, rp, NOW) >= 0) continue;
    const f = table.createOutbound(proto, h, ipt, r, rp, NOW);
    if (f < 0) continue;
    if (tcp) {
      table.tcpUpdate(f, TcpFlag.SYN, true, NOW);
      table.tcpUpdate(f, TcpFlag.SYN | TcpFlag.ACK, false, NOW);
      table.tcpUpdate(f, TcpFlag.ACK, true, NOW);
    } else table.touch(f, false, NOW);
    table.addOut(f, 3, 1500);
  }
  const fillMs = performance.now() - t0;
  const file = join(dir, `t${n}.state`);
  const wallMs = Date.now();

  // The checkpoint while a 1 ms timer stands in for the data path's turns.
  let last = performance.now();
  let stall = 0;
  const ticker = setInterval(() => {
    const t = performance.now();
    stall = Math.max(stall, t - last);
    last = t;
  }, 1);
  const cp = await checkpointTableState({ file, table, stats, nat, now: NOW, wallMs });
  clearInterval(ticker);
  const save = saveTableState({ file, table, stats, nat, now: NOW, wallMs });
  const size = statSync(file).size;
  const s2 = new NatStats();
  const t2 = new FlowTable(nat, s2);
  const ld = loadTableState({ file, table: t2, stats: s2, nat, now: NOW, wallMs: wallMs + 1000 });
  if (ld.kind !== "restored" || ld.report.flows !== table.active)
    throw new Error(`restore failed: ${JSON.stringify(ld)}`);
  const row = {
    flows: table.active,
    fileMiB: +(size / 2 ** 20).toFixed(1),
    saveMs: Math.round(save.ms),
    checkpointMs: Math.round(cp.ms),
    checkpointSlices: cp.slices,
    checkpointMaxSliceMs: +cp.maxSliceMs.toFixed(1),
    eventLoopStallMs: +stall.toFixed(1),
    restoreMs: Math.round(ld.ms),
    fillMs: Math.round(fillMs),
  };
  console.log(JSON.stringify(row));
}

const sizes = process.argv
  .slice(2)
  .map(Number)
  .filter((x) => x > 0);
const dir = mkdtempSync(join(tmpdir(), "tunnat-bench-state-"));
try {
  for (const n of sizes.length ? sizes : [100_000, 1_000_000]) await run(n, dir);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
