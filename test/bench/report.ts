/**
 * The summary of `npm run bench` (test/bench/bench.sh): reads the raw records the script wrote
 * (one JSON object per test run: the tool's own output and a sample of the host's counters
 * before and after), derives every figure, and prints a table for people and writes a JSON file
 * for machines. The arithmetic (medians, per-round ratios, CPU accounting, UDP loss split) is
 * exported for test/unit/bench/report.test.ts.
 *
 *   node dist/test/bench/report.js RESULTS.jsonl OUT.json META-JSON
 */
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { pathToFileURL } from "node:url";

/** One sample of the host's counters (bench.sh `sample`). */
export interface Sample {
  /** Wall-clock seconds. */
  t: number;
  /** The /proc/stat "cpu" line in jiffies: user nice system idle iowait irq softirq steal ... */
  cpu: number[];
  /** The daemon's utime + stime in jiffies (0 when no daemon runs). */
  daemonTicks: number;
  /** The request/response server's utime + stime in jiffies. */
  serverTicks?: number;
  /** The TUN's tx_dropped: packets the kernel dropped because the daemon did not read them. */
  tunDropped: number;
  /** The server namespace's Udp counters from /proc/net/snmp. */
  udp: { inDatagrams: number; noPorts: number; inErrors: number; rcvbufErrors: number };
}

export interface RawRecord {
  mode: string;
  round: number;
  test: string;
  before: Sample;
  after: Sample;
  tool: unknown;
  extra: Record<string, unknown>;
}

export interface Meta {
  rounds: number;
  seconds: number;
  quick: boolean;
  flows: number;
  queues: number | null;
  clkTck: number;
  cpus: number;
  loadBefore: string;
  loadAfter: string;
  maxFlows: number;
  /** natload "wake": a byte's round trip between two CPUs after both idled (two wake-ups). */
  wake?: { idleMs: number; p50Us: number; p90Us: number; p99Us: number } | null;
  /** The daemon's nice level in the run (the unit's Nice= unless BENCH_DAEMON_NICE). */
  daemonNice?: number;
}

/** The host's CPU over one run, in seconds and shares. */
export interface CpuUse {
  wallSeconds: number;
  /** user + nice + system + irq + softirq of all CPUs. */
  hostBusySeconds: number;
  softirqSeconds: number;
  stealSeconds: number;
  daemonSeconds: number;
  /** daemon + softirq: the "NAT CPU". */
  natSeconds: number;
  /** The load tools' and servers' own CPU, where they report it. */
  endpointSeconds: number;
  /** Busy time no process of the bench accounts for, as % of the whole machine (lower bound). */
  otherPercent: number;
  stealPercent: number;
}

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** The p-quantile (0..1) by nearest rank of a list (NaN when empty). */
export function quantile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))] as number;
}

/**
 * The median of per-round ratios b/a: each round runs both modes back to back, so a round's
 * own ratio sees the same background load; rounds where either value is missing are left out.
 */
export function pairedRatio(
  a: ReadonlyMap<number, number>,
  b: ReadonlyMap<number, number>,
): number {
  const r: number[] = [];
  for (const [round, x] of a) {
    const y = b.get(round);
    if (y !== undefined && Number.isFinite(x) && Number.isFinite(y) && x > 0) r.push(y / x);
  }
  return median(r);
}

/** The median of per-round differences b - a. */
export function pairedDifference(
  a: ReadonlyMap<number, number>,
  b: ReadonlyMap<number, number>,
): number {
  const d: number[] = [];
  for (const [round, x] of a) {
    const y = b.get(round);
    if (y !== undefined && Number.isFinite(x) && Number.isFinite(y)) d.push(y - x);
  }
  return median(d);
}

const jiffies = (s: Sample, i: number): number => s.cpu[i] ?? 0;

/** CPU use between two samples; `endpointSeconds` is what the tools reported for themselves. */
export function cpuUse(
  before: Sample,
  after: Sample,
  clkTck: number,
  endpointSeconds: number,
): CpuUse {
  const d = (i: number) => (jiffies(after, i) - jiffies(before, i)) / clkTck;
  const total =
    after.cpu.slice(0, 8).reduce((x, y) => x + y, 0) -
    before.cpu.slice(0, 8).reduce((x, y) => x + y, 0);
  const totalSeconds = total / clkTck;
  const softirq = d(6);
  const hostBusy = d(0) + d(1) + d(2) + d(5) + softirq;
  const steal = d(7);
  const daemon = (after.daemonTicks - before.daemonTicks) / clkTck;
  // With tick-based accounting a softirq tick taken while a process runs counts in its stime
  // and in the softirq column: subtracting both can go below zero, so this is a lower bound.
  const other = Math.max(0, hostBusy - daemon - softirq - endpointSeconds);
  return {
    wallSeconds: after.t - before.t,
    hostBusySeconds: hostBusy,
    softirqSeconds: softirq,
    stealSeconds: steal,
    daemonSeconds: daemon,
    natSeconds: daemon + softirq,
    endpointSeconds,
    otherPercent: totalSeconds > 0 ? (other / totalSeconds) * 100 : 0,
    stealPercent: totalSeconds > 0 ? (steal / totalSeconds) * 100 : 0,
  };
}

/** UDP datagrams of one run: what was sent, what passed the NAT, what the receiver read. */
export interface UdpCount {
  sent: number;
  /** Arrived at the server's host: Udp InDatagrams + InErrors + NoPorts of its namespace. */
  arrived: number;
  /** What the receiving program read. */
  read: number;
  /** sent - arrived: lost between the sender's socket and the server's host, NAT included. */
  natPathLoss: number;
  /** The server socket's buffer overflows (RcvbufErrors): the receiver's loss, not the NAT's. */
  receiverLoss: number;
  /** Of the NAT path's loss: the TUN's queue drops (the daemon did not read in time). */
  tunDropped: number;
  /** The senders' send time (the longest of them). */
  seconds: number;
}

interface UdpTool {
  size: number;
  senders: { packets: number; seconds: number; cpuSeconds: number }[];
  sink: { packets: number; cpuSeconds?: number };
}

export function udpCount(before: Sample, after: Sample, tool: UdpTool): UdpCount {
  const sent = tool.senders.reduce((s, x) => s + x.packets, 0);
  const u = (k: keyof Sample["udp"]) => after.udp[k] - before.udp[k];
  const arrived = u("inDatagrams") + u("inErrors") + u("noPorts");
  return {
    sent,
    arrived,
    read: tool.sink.packets,
    natPathLoss: Math.max(0, sent - arrived),
    receiverLoss: u("rcvbufErrors"),
    tunDropped: after.tunDropped - before.tunDropped,
    seconds: Math.max(0, ...tool.senders.map((x) => x.seconds)),
  };
}

/** The figures one record yields, by figure id (units as in FIGURES). */
export interface Derived {
  mode: string;
  round: number;
  test: string;
  cpu: CpuUse;
  values: Record<string, number>;
}

interface TcpTool {
  bytes: number;
  seconds: number;
  bitsPerSecond: number;
  retransmits: number;
  senderCpuPercent: number;
  receiverCpuPercent: number;
}
interface RrTool {
  transactions: number;
  rate: number;
  p50Us: number;
  p99Us: number;
  errors: number;
  cpuSeconds: number;
}
interface CrrTool {
  connections: number;
  rate: number;
  errors: number;
  cpuSeconds: number;
}

export function derive(r: RawRecord, clkTck: number): Derived {
  const values: Record<string, number> = {};
  let endpoints = 0;
  const t = r.test;
  const rss = typeof r.extra.rssKb === "number" && r.extra.rssKb > 0 ? r.extra.rssKb / 1024 : null;
  if (t === "ping") {
    const rtt = ((r.tool as { rttMs: number[] }).rttMs ?? []).map((x) => x * 1000);
    values.ping_p50 = quantile(rtt, 0.5);
    values.ping_p99 = quantile(rtt, 0.99);
    values.ping_loss = (1 - rtt.length / ((r.tool as { sent: number }).sent || 1)) * 100;
  } else if (t === "rr" || t === "rr-full") {
    const x = r.tool as RrTool;
    endpoints = x.cpuSeconds;
    const sfx = t === "rr" ? "" : "_full";
    values[`rr_rate${sfx}`] = x.rate;
    values[`rr_p50${sfx}`] = x.p50Us;
    values[`rr_p99${sfx}`] = x.p99Us;
    if (t === "rr-full" && rss !== null) values.rss_full = rss;
  } else if (t === "crr") {
    const xs = r.tool as CrrTool[];
    endpoints = xs.reduce((s, x) => s + x.cpuSeconds, 0);
    values.crr_rate = xs.reduce((s, x) => s + x.rate, 0);
    values.crr_errors = xs.reduce((s, x) => s + x.errors, 0);
    values.crr_client_cpu = (endpoints / Math.max(1e-9, r.after.t - r.before.t)) * 100;
  } else if (t.startsWith("tcp")) {
    const x = r.tool as TcpTool;
    const id = t.replace("-", "_");
    endpoints = ((x.senderCpuPercent + x.receiverCpuPercent) / 100) * x.seconds;
    values[id] = x.bitsPerSecond / 1e9;
    values[`${id}_sender_cpu`] = x.senderCpuPercent;
    const u = cpuUse(r.before, r.after, clkTck, endpoints);
    const gb = x.bytes / 1e9;
    if (gb > 0) {
      values[`${id}_cpu_gb`] = u.natSeconds / gb;
      values[`${id}_host_cpu_gb`] = u.hostBusySeconds / gb;
    }
  } else if (t.startsWith("udp")) {
    const x = r.tool as UdpTool;
    endpoints = x.senders.reduce((s, y) => s + y.cpuSeconds, 0) + (x.sink.cpuSeconds ?? 0);
    const c = udpCount(r.before, r.after, x);
    const secs = c.seconds || 1;
    values[`${t}_sent`] = c.sent / secs;
    values[`${t}_delivered`] = c.arrived / secs;
    values[`${t}_nat_loss`] = c.sent > 0 ? (c.natPathLoss / c.sent) * 100 : 0;
    values[`${t}_tun_drop`] = c.sent > 0 ? (c.tunDropped / c.sent) * 100 : 0;
    values[`${t}_rx_loss`] = c.arrived > 0 ? (c.receiverLoss / c.arrived) * 100 : 0;
    values[`${t}_sender_cpu`] = (x.senders.reduce((s, y) => s + y.cpuSeconds, 0) / secs) * 100;
    const u = cpuUse(r.before, r.after, clkTck, endpoints);
    if (c.arrived > 0) values[`${t}_cpu_mpkt`] = u.natSeconds / (c.arrived / 1e6);
  } else if (t === "fill") {
    const x = r.tool as { live: number; before: number };
    values.flows_live = x.live;
    values.flows_added = x.live - x.before;
  }
  endpoints += ((r.after.serverTicks ?? 0) - (r.before.serverTicks ?? 0)) / clkTck;
  return {
    mode: r.mode,
    round: r.round,
    test: t,
    cpu: cpuUse(r.before, r.after, clkTck, endpoints),
    values,
  };
}

/** How a figure compares: a ratio tunnat/kernel (higher is better or worse) or a difference. */
type Compare = "ratio" | "difference" | "none";

interface Figure {
  id: string;
  label: string;
  unit: string;
  compare: Compare;
  /** The target for the final code, as printed; "" = none. */
  target?: string;
}

/** Every row of the table, in order. */
export const FIGURES: readonly Figure[] = [
  {
    id: "ping_p50",
    label: "ping RTT, median",
    unit: "µs",
    compare: "difference",
    target: "adds <= 50",
  },
  { id: "ping_p99", label: "ping RTT, p99", unit: "µs", compare: "difference" },
  {
    id: "rr_rate",
    label: "TCP 1-byte request/response",
    unit: "transactions/s",
    compare: "ratio",
    target: ">= 0.9",
  },
  { id: "rr_p50", label: "  request/response latency, median", unit: "µs", compare: "difference" },
  { id: "rr_p99", label: "  request/response latency, p99", unit: "µs", compare: "difference" },
  {
    id: "crr_rate",
    label: "new TCP connections (32 in flight)",
    unit: "connections/s",
    compare: "ratio",
    target: ">= 0.9",
  },
  { id: "crr_errors", label: "  failed connections", unit: "count", compare: "none" },
  { id: "crr_client_cpu", label: "  clients' CPU", unit: "% of one core", compare: "none" },
  { id: "tcp1", label: "TCP, 1 stream", unit: "Gbit/s", compare: "ratio", target: ">= 0.9" },
  { id: "tcp1_sender_cpu", label: "  iperf3 sender CPU", unit: "% of one core", compare: "none" },
  {
    id: "tcp1_cpu_gb",
    label: "  NAT CPU per GB (daemon + softirq)",
    unit: "CPU s/GB",
    compare: "ratio",
    target: "<= 1.5",
  },
  { id: "tcp1_host_cpu_gb", label: "  whole-host CPU per GB", unit: "CPU s/GB", compare: "ratio" },
  { id: "tcp4", label: "TCP, 4 streams", unit: "Gbit/s", compare: "ratio", target: ">= 0.65" },
  { id: "tcp4_sender_cpu", label: "  iperf3 sender CPU", unit: "% of one core", compare: "none" },
  {
    id: "tcp4_cpu_gb",
    label: "  NAT CPU per GB (daemon + softirq)",
    unit: "CPU s/GB",
    compare: "ratio",
  },
  { id: "tcp16", label: "TCP, 16 streams", unit: "Gbit/s", compare: "ratio" },
  { id: "tcp16_sender_cpu", label: "  iperf3 sender CPU", unit: "% of one core", compare: "none" },
  {
    id: "tcp16_cpu_gb",
    label: "  NAT CPU per GB (daemon + softirq)",
    unit: "CPU s/GB",
    compare: "ratio",
  },
  {
    id: "udp64_delivered",
    label: "UDP 64 B, passed the NAT",
    unit: "packets/s",
    compare: "ratio",
    target: ">= 0.8",
  },
  { id: "udp64_sent", label: "  offered by the senders", unit: "packets/s", compare: "ratio" },
  { id: "udp64_sender_cpu", label: "  senders' CPU", unit: "% of one core", compare: "none" },
  { id: "udp64_nat_loss", label: "  lost in the NAT path", unit: "% of sent", compare: "none" },
  {
    id: "udp64_tun_drop",
    label: "    of which TUN queue drops",
    unit: "% of sent",
    compare: "none",
  },
  {
    id: "udp64_rx_loss",
    label: "  lost at the receiver's socket",
    unit: "% of arrived",
    compare: "none",
  },
  {
    id: "udp64_cpu_mpkt",
    label: "  NAT CPU per million packets",
    unit: "CPU s/Mpkt",
    compare: "ratio",
  },
  {
    id: "udp1400_delivered",
    label: "UDP 1400 B, passed the NAT",
    unit: "packets/s",
    compare: "ratio",
  },
  { id: "udp1400_sent", label: "  offered by the senders", unit: "packets/s", compare: "ratio" },
  { id: "udp1400_sender_cpu", label: "  senders' CPU", unit: "% of one core", compare: "none" },
  { id: "udp1400_nat_loss", label: "  lost in the NAT path", unit: "% of sent", compare: "none" },
  {
    id: "udp1400_tun_drop",
    label: "    of which TUN queue drops",
    unit: "% of sent",
    compare: "none",
  },
  {
    id: "udp1400_rx_loss",
    label: "  lost at the receiver's socket",
    unit: "% of arrived",
    compare: "none",
  },
  {
    id: "udp1400_cpu_mpkt",
    label: "  NAT CPU per million packets",
    unit: "CPU s/Mpkt",
    compare: "ratio",
  },
  { id: "flows_live", label: "full table: live flows", unit: "flows", compare: "none" },
  { id: "tcp1_full", label: "  TCP, 1 stream", unit: "Gbit/s", compare: "ratio" },
  { id: "rr_rate_full", label: "  request/response", unit: "transactions/s", compare: "ratio" },
  {
    id: "rr_p99_full",
    label: "  request/response latency, p99",
    unit: "µs",
    compare: "difference",
  },
  { id: "rss_full", label: "  daemon RSS", unit: "MiB", compare: "none" },
];

export interface Row {
  id: string;
  label: string;
  unit: string;
  target: string;
  /** Per mode: the value of each round (by round number) and their median. */
  modes: Record<string, { perRound: Record<string, number>; median: number }>;
  /** tunnat/kernel, the median of per-round ratios (compare "ratio"). */
  ratio: number | null;
  /** tunnat - kernel, the median of per-round differences (compare "difference"). */
  difference: number | null;
}

export function summarize(derived: readonly Derived[]): Row[] {
  const rows: Row[] = [];
  for (const f of FIGURES) {
    const byMode = new Map<string, Map<number, number>>();
    for (const d of derived) {
      const v = d.values[f.id];
      if (v === undefined || !Number.isFinite(v)) continue;
      let m = byMode.get(d.mode);
      if (!m) {
        m = new Map();
        byMode.set(d.mode, m);
      }
      m.set(d.round, v);
    }
    if (byMode.size === 0) continue;
    const modes: Row["modes"] = {};
    for (const [mode, m] of byMode)
      modes[mode] = { perRound: Object.fromEntries(m), median: median([...m.values()]) };
    const k = byMode.get("kernel");
    const t = byMode.get("tunnat");
    const ratio = f.compare === "ratio" || f.compare === "difference";
    rows.push({
      id: f.id,
      label: f.label,
      unit: f.unit,
      target: f.target ?? "",
      modes,
      ratio: ratio && k && t ? pairedRatio(k, t) : null,
      difference: f.compare === "difference" && k && t ? pairedDifference(k, t) : null,
    });
  }
  return rows;
}

/** Runs the machine was busy during: other work or steal above the thresholds. */
export function busyWarnings(derived: readonly Derived[], otherPct = 10, stealPct = 5): string[] {
  const w: string[] = [];
  for (const d of derived) {
    const why: string[] = [];
    if (d.cpu.otherPercent > otherPct)
      why.push(`other processes used >= ${d.cpu.otherPercent.toFixed(0)}% of the machine`);
    if (d.cpu.stealPercent > stealPct)
      why.push(`the hypervisor stole ${d.cpu.stealPercent.toFixed(0)}%`);
    if (why.length) w.push(`round ${d.round} ${d.mode} ${d.test}: ${why.join(", ")}`);
  }
  return w;
}

/**
 * Where a figure may be the load's limit rather than the NAT's: a mode that carried all the UDP
 * its senders offered (its figure is a lower bound of its capacity), or a sender near a full core.
 */
export function limitNotes(rows: readonly Row[]): string[] {
  const notes: string[] = [];
  const val = (id: string, mode: string) => rows.find((r) => r.id === id)?.modes[mode]?.median;
  for (const size of ["64", "1400"])
    for (const mode of ["kernel", "tunnat", "direct"]) {
      const loss = val(`udp${size}_nat_loss`, mode);
      if (loss !== undefined && loss < 1)
        notes.push(
          `UDP ${size} B, ${mode}: lost ${fmt(loss)}% of what was offered, so its figure is what the senders offered (a lower bound of what it can carry), not its limit.`,
        );
    }
  for (const id of ["tcp1", "tcp4", "tcp16", "tcp1_full"])
    for (const mode of ["kernel", "tunnat", "direct"]) {
      const cpu = val(`${id}_sender_cpu`, mode);
      if (cpu !== undefined && cpu >= 90)
        notes.push(
          `${id}, ${mode}: the iperf3 sender used ${fmt(cpu)}% of a core; the figure may be the sender's limit.`,
        );
    }
  return notes;
}

/** A number for the table: 3 significant digits, thousands as "k"/"M" above 10,000. */
export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "-";
  const a = Math.abs(x);
  if (a >= 1e7) return `${(x / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${(x / 1e3).toFixed(a >= 1e5 ? 0 : 1)}k`;
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

export function formatTable(rows: readonly Row[], modes: readonly string[]): string {
  const head = ["figure", "unit", ...modes, "tunnat/kernel", "tunnat-kernel", "target"];
  const body = rows.map((r) => [
    r.label,
    r.unit,
    ...modes.map((m) => fmt(r.modes[m]?.median)),
    r.ratio === null ? "" : `${fmt(r.ratio)}x`,
    r.difference === null ? "" : `${r.difference >= 0 ? "+" : ""}${fmt(r.difference)}`,
    r.target,
  ]);
  const all = [head, ...body];
  const w = head.map((_, i) => Math.max(...all.map((row) => (row[i] ?? "").length)));
  const line = (row: string[]) =>
    row
      .map((c, i) => (i < 2 ? c.padEnd(w[i] ?? 0) : c.padStart(w[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(head), line(head.map((_, i) => "-".repeat(w[i] ?? 0))), ...body.map(line)].join(
    "\n",
  );
}

export const LEGEND = `Columns:
  figure         what was measured; indented rows belong to the row above them.
  unit           the unit of every number in the row (kernel, tunnat, direct, tunnat-kernel).
  kernel         Linux's own NAT (nftables snat) on the same topology: median over the rounds.
  tunnat         the daemon under test, same topology plus its TUN hop: median over the rounds.
  direct         (--direct) no NAT, plain forwarding: what the endpoints and the path can do.
  tunnat/kernel  the median of per-round ratios tunnat/kernel (each round runs both modes back
                 to back, so a ratio sees one background load); for CPU rows lower is better.
  tunnat-kernel  the median of per-round differences, in the row's unit (latency added).
  target         issue 11's target for the final code on a quiet 2-core VM, on tunnat/kernel
                 (">= 0.9": at least 0.9x the kernel's figure) or on tunnat-kernel ("adds <= 50":
                 at most 50 us more). A figure, not a test: nothing fails when it is missed.
CPU: "NAT CPU" = the daemon's user+system time plus every CPU's softirq time (/proc/stat); this
kernel accounts by ticks, so a softirq tick taken while the daemon runs counts in both and the
tunnat figure is an upper bound. "whole-host" = all busy time of all CPUs, endpoints included.
UDP: passed the NAT = datagrams that reached the server's host (its Udp InDatagrams + InErrors +
NoPorts) per second of sending; lost in the NAT path = sent - arrived; lost at the receiver =
the server socket's RcvbufErrors. Senders' and iperf3's CPU show whether a sender was the limit
(near 100% of one core per sender means the figure may be the sender's, not the NAT's).`;

export function report(lines: string, meta: Meta): { text: string; json: unknown } {
  const raw = lines
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as RawRecord);
  const derived = raw.map((r) => derive(r, meta.clkTck));
  const rows = summarize(derived);
  const modes = ["kernel", "tunnat", "direct"].filter((m) => derived.some((d) => d.mode === m));
  const warnings = busyWarnings(derived);
  const notes = limitNotes(rows);
  const text = [
    "",
    formatTable(rows, modes),
    "",
    ...(notes.length
      ? ["Where the load may be the limit:", ...notes.map((n) => `  ${n}`), ""]
      : []),
    LEGEND,
    "",
    `load average (1, 5, 15 min) before: ${meta.loadBefore}, after: ${meta.loadAfter}`,
    ...(meta.daemonNice !== undefined ? [`the daemon's nice level: ${meta.daemonNice}`] : []),
    ...(meta.wake
      ? [
          `idle wake-ups: a byte's round trip between two CPUs over pipes after ${meta.wake.idleMs} ms idle takes ${meta.wake.p50Us} µs (median; p90 ${meta.wake.p90Us}, p99 ${meta.wake.p99Us}). That is two wake-ups of an idle CPU, the least a userspace NAT adds to an idle ping: the daemon is woken for the request and the pinger for the reply, where the kernel's NAT forwards both in the sender's own context.`,
        ]
      : []),
    warnings.length
      ? `WARNING: the machine was busy during ${warnings.length} of ${derived.length} runs; figures are less reliable:\n  ${warnings.join("\n  ")}`
      : "The machine was not noticeably busy with other work during any run.",
  ].join("\n");
  const json = {
    meta: {
      ...meta,
      cpuModel: cpus()[0]?.model ?? "?",
      kernel: release(),
      node: process.version,
      date: new Date().toISOString(),
    },
    rows,
    notes,
    warnings,
    runs: derived,
  };
  return { text, json };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [file, out, metaText] = process.argv.slice(2);
  if (!file || !out || !metaText) {
    console.error("usage: report.js RESULTS.jsonl OUT.json META-JSON");
    process.exit(2);
  }
  const { text, json } = report(readFileSync(file, "utf8"), JSON.parse(metaText) as Meta);
  console.log(text);
  writeFileSync(out, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nwrote ${out}`);
}
