/**
 * `tunnat status`: the running gateway on one screen, what `wg show` is to WireGuard: role,
 * uptime, addresses, table fill, ports used per NAT address, drops per second, top talkers and
 * warnings. Two stats snapshots --interval seconds apart give the rates. Everything comes from the
 * control socket's stats snapshot (never from metric names); --json prints both snapshots' values
 * as computed here, exact.
 */
import { request } from "../control/control-client.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";
import { humanBytes, humanCount, humanSeconds, numberOption } from "./format.js";

type Snap = Record<string, unknown>;
type Num = Record<string, number>;

export interface StatusView {
  role: string;
  ready: boolean;
  uptimeSeconds: number;
  tun: string;
  inside: string[];
  natAddresses: string[];
  preset: string;
  mapping: string;
  filtering: string;
  flows: number;
  capacity: number;
  insideHosts: number;
  ports: { natAddress: string; protocol: string; used: number; free: number }[];
  dropsPerSecond: number;
  /** Drops per second by reason, the non-zero ones. */
  dropRates: Record<string, number>;
  packetsPerSecond: number;
  bytesPerSecond: number;
  topTalkers: { host: string; bytes: number; bytesPerSecond: number; flows: number }[];
  warnings: string[];
}

const sum = (o: Num | undefined) => Object.values(o ?? {}).reduce((a, b) => a + b, 0);

/** The summary from two snapshots taken `seconds` apart. */
export function statusView(a: Snap, b: Snap, seconds: number): StatusView {
  const g = (b.gateway ?? {}) as Record<string, unknown>;
  const table = (b.table ?? {}) as Num;
  const natA = (a.nat ?? {}) as Num;
  const natB = (b.nat ?? {}) as Num;
  const dA = (a.drops ?? {}) as Num;
  const dB = (b.drops ?? {}) as Num;
  const dt = seconds > 0 ? seconds : 1;
  const rate = (x: number | undefined, y: number | undefined) =>
    Math.max(0, (y ?? 0) - (x ?? 0)) / dt;
  const dropRates: Record<string, number> = {};
  for (const k of Object.keys(dB)) {
    const r = rate(dA[k], dB[k]);
    if (r > 0) dropRates[k] = r;
  }
  const prevHost = new Map(
    ((a.topTalkers ?? []) as Record<string, number | string>[]).map((h) => [
      h.host,
      Number(h.bytesOut) + Number(h.bytesIn),
    ]),
  );
  const topTalkers = ((b.topTalkers ?? []) as Record<string, number | string>[]).map((h) => {
    const bytes = Number(h.bytesOut) + Number(h.bytesIn);
    const before = prevHost.get(h.host);
    return {
      host: String(h.host),
      bytes,
      bytesPerSecond: before === undefined ? 0 : Math.max(0, bytes - before) / dt,
      flows: Number(h.flows ?? 0),
    };
  });
  const ports = (b.ports ?? []) as StatusView["ports"];
  const v: StatusView = {
    role:
      g.manageRoutes === false
        ? "NAT gateway, translation only (--no-manage-routes)"
        : "NAT gateway, routes managed",
    ready: b.ready === true,
    uptimeSeconds: Number(g.uptimeSeconds ?? 0),
    tun: String(g.tun ?? "?"),
    inside: (g.inside ?? []) as string[],
    natAddresses: (g.natAddresses ?? []) as string[],
    preset: String(g.preset ?? "?"),
    mapping: String(g.mapping ?? "?"),
    filtering: String(g.filtering ?? "?"),
    flows: table.flows ?? 0,
    capacity: table.capacity ?? 0,
    insideHosts: table.insideHosts ?? 0,
    ports,
    dropsPerSecond: rate(sum(dA), sum(dB)),
    dropRates,
    packetsPerSecond: rate(
      (natA.packetsInFromSource ?? 0) + (natA.packetsInFromDestination ?? 0),
      (natB.packetsInFromSource ?? 0) + (natB.packetsInFromDestination ?? 0),
    ),
    bytesPerSecond: rate(
      (natA.bytesInFromSource ?? 0) + (natA.bytesInFromDestination ?? 0),
      (natB.bytesInFromSource ?? 0) + (natB.bytesInFromDestination ?? 0),
    ),
    topTalkers,
    warnings: [],
  };
  v.warnings = warningsOf(v, b);
  return v;
}

/** What an operator should look at: each a sentence. */
function warningsOf(v: StatusView, b: Snap): string[] {
  const w: string[] = [];
  if (!v.ready) w.push("not ready: /readyz answers 503 (see the daemon's log)");
  if (v.capacity > 0 && v.flows / v.capacity >= 0.8)
    w.push(
      `flow table ${Math.round((100 * v.flows) / v.capacity)}% full (raise --max-flows, or --per-host-quota)`,
    );
  for (const p of v.ports) {
    const total = p.used + p.free;
    if (total > 0 && p.used / total >= 0.8)
      w.push(
        `${p.natAddress} ${p.protocol}: ${Math.round((100 * p.used) / total)}% of ports used (add a --nat-address)`,
      );
  }
  for (const k of ["tableFull", "portExhausted", "quotaExceeded"])
    if ((v.dropRates[k] ?? 0) > 0)
      w.push(`dropping ${k} now: ${humanCount(v.dropRates[k] ?? 0)}/s`);
  const dp = (b.datapath ?? {}) as Num;
  if ((dp.writeDrops ?? 0) > 0)
    w.push(`${dp.writeDrops} packets lost writing to the TUN since start`);
  const tun = (b.tun ?? {}) as Num;
  if ((tun.droppedToDaemon ?? 0) > 0)
    w.push(`the TUN dropped ${tun.droppedToDaemon} packets before tunnat read them (CPU-bound?)`);
  const ml = (b.mappingLog ?? {}) as Num;
  if ((ml.dropped ?? 0) > 0)
    w.push(`mapping log dropped ${ml.dropped} lines (its sink is too slow)`);
  const rl = (b.lastReload ?? {}) as { needRestart?: { field: string }[] };
  if (rl.needRestart && rl.needRestart.length > 0)
    w.push(`restart to apply: ${rl.needRestart.map((c) => c.field).join(", ")}`);
  return w;
}

/** The screen. */
export function formatStatus(v: StatusView): string {
  const pct = (n: number, d: number) => (d > 0 ? ` (${((100 * n) / d).toFixed(1)}%)` : "");
  const L: string[] = [];
  L.push(`tunnat: ${v.role}, ${v.ready ? "ready" : "NOT READY"}`);
  L.push(`  uptime:        ${humanSeconds(v.uptimeSeconds)}`);
  L.push(`  tun:           ${v.tun}`);
  L.push(`  inside:        ${v.inside.join(", ")}`);
  L.push(`  nat addresses: ${v.natAddresses.join(", ")}`);
  L.push(`  behaviour:     preset ${v.preset}, ${v.mapping} mapping, ${v.filtering} filtering`);
  L.push(
    `  flows:         ${humanCount(v.flows)} of ${humanCount(v.capacity)}${pct(v.flows, v.capacity)}, ${v.insideHosts} inside hosts`,
  );
  L.push(
    `  traffic:       ${humanCount(v.packetsPerSecond)} packets/s, ${humanBytes(v.bytesPerSecond)}/s`,
  );
  const reasons = Object.entries(v.dropRates)
    .sort((a, b) => b[1] - a[1])
    .map(([k, r]) => `${k} ${humanCount(r)}/s`)
    .join(", ");
  L.push(`  drops:         ${humanCount(v.dropsPerSecond)}/s${reasons ? ` (${reasons})` : ""}`);
  L.push("ports used (of the range):");
  for (const p of v.ports)
    L.push(
      `  ${p.natAddress.padEnd(15)} ${p.protocol.padEnd(4)} ${humanCount(p.used).padStart(6)} of ${humanCount(p.used + p.free)}${pct(p.used, p.used + p.free)}`,
    );
  L.push("top talkers (bytes since they appeared, rate now):");
  if (v.topTalkers.length === 0) L.push("  none");
  for (const h of v.topTalkers)
    L.push(
      `  ${h.host.padEnd(15)} ${humanBytes(h.bytes).padStart(9)}  ${humanBytes(h.bytesPerSecond).padStart(9)}/s  ${h.flows} flows`,
    );
  L.push(v.warnings.length === 0 ? "warnings: none" : "warnings:");
  for (const w of v.warnings) L.push(`  ! ${w}`);
  return `${L.join("\n")}\n`;
}

async function snapshot(socket: string): Promise<Snap> {
  let s: Snap = {};
  await request(socket, { cmd: "stats" }, (o) => {
    if (o.type === "stats") s = o.stats as Snap;
  });
  return s;
}

export const status: Command = {
  command: "status",
  describe: "one-screen summary of the running gateway (like wg show)",
  builder: (y) =>
    numberOption(clientOptions(y), "interval", {
      describe: "seconds between the two samples the rates come from",
      min: 0,
      max: 60,
      default: 1,
    }),
  examples: [
    ["$0 status", "role, uptime, fill, ports, drops/s, top talkers, warnings"],
    ["$0 status --json --interval 0", "the same, exact, without waiting"],
  ],
  async run(argv) {
    const socket = reachableSocket(argv);
    if (socket === undefined) return 1;
    const secs = Number(argv.interval ?? 1);
    const a = await snapshot(socket);
    const t0 = performance.now();
    if (secs > 0) await new Promise((r) => setTimeout(r, secs * 1000));
    const b = secs > 0 ? await snapshot(socket) : a;
    const v = statusView(a, b, secs > 0 ? (performance.now() - t0) / 1000 : 0);
    process.stdout.write(argv.json === true ? `${JSON.stringify(v, null, 2)}\n` : formatStatus(v));
    return 0;
  },
};
