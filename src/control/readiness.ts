/**
 * /readyz, `tunnat_ready` and the `ready` field of `tunnat stats`: is this gateway forwarding?
 * Two halves, both read off the data path:
 *
 *  - the data loop (synchronous, at each ask): the loop runs, the TUN is open, a batch or a sweep
 *    tick (every 100 ms, even when idle) was seen within `staleMs`, and the loop is reading: when
 *    the TUN's queue dropped packets unread between two kernel checks while the loop read none,
 *    the data path is stuck although its timer still ticks. An idle gateway reads nothing and drops
 *    nothing, and is ready.
 *  - the kernel (KernelMonitor, every ~2 s with async `ip -j` and `nft -j`, cached): the TUN is
 *    present and up, the policy rules, the routes of table T (default via the TUN, throws,
 *    prohibit), the NAT /32 routes, the proxy ARP entries and the guard's nft table are there.
 *    Someone deleting a rule or a proxy entry by hand makes /readyz 503 naming it.
 *
 * The monitor also caches the guard's drop counters for the metrics (read at scrape time).
 */
import { performance } from "node:perf_hooks";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import type { Guard, GuardReason } from "./guard.js";
import { PROHIBIT_METRIC, parseCounters, parseRoutes, parseRules } from "./guard.js";
import type { PlumbingSpec } from "./plumbing.js";
import type { Runner } from "./runner.js";

/** What the kernel half looks at: the TUN always, the rest only with --manage-routes. */
export interface KernelExpect {
  tun: string;
  plumbing: PlumbingSpec | null;
}

/** One poll's raw answers (JSON text; null = the command failed). */
export interface KernelAnswers {
  link: string | null;
  rules: string | null;
  table: string | null;
  tunRoutes: string | null;
  proxy: string | null;
  nftCounters: string | null;
}

interface LinkJson {
  flags?: string[];
  stats64?: { tx?: { dropped?: number } };
}

/** What is missing for forwarding, one phrase each (empty = nothing). Pure, for tests. */
export function kernelProblems(a: KernelAnswers, e: KernelExpect): string[] {
  const out: string[] = [];
  const parse = <T>(s: string | null): T | null => {
    if (s === null) return null;
    try {
      return JSON.parse(s) as T;
    } catch {
      return null;
    }
  };
  const link = parse<LinkJson[]>(a.link)?.[0];
  if (!link) out.push(`TUN ${e.tun} missing`);
  else if (!(link.flags ?? []).includes("UP")) out.push(`TUN ${e.tun} down`);
  const p = e.plumbing;
  if (!p) return out;
  const table = String(p.table);
  const rules =
    a.rules === null ? [] : safe(() => parseRules(a.rules ?? "[]", p.table, p.priority));
  for (const c of p.inside.map(formatCidr))
    if (!rules.some((r) => r.iif === p.insideInterface && r.from === c))
      out.push(`policy rule "iif ${p.insideInterface} from ${c} lookup ${table}" missing`);
  const tableRoutes = parse<{ type?: string; dst?: string; dev?: string }[]>(a.table) ?? [];
  if (
    !tableRoutes.some(
      (r) => (r.type ?? "unicast") === "unicast" && r.dst === "default" && r.dev === p.tun,
    )
  )
    out.push(`route "default dev ${p.tun} table ${table}" missing`);
  const guardRoutes = a.table === null ? [] : safe(() => parseRoutes(a.table ?? "[]"));
  for (const c of p.inside.map(formatCidr))
    if (!guardRoutes.some((r) => r.type === "throw" && r.dst === c))
      out.push(`route "throw ${c} table ${table}" missing`);
  if (
    !guardRoutes.some(
      (r) => r.type === "prohibit" && r.dst === "default" && r.metric === PROHIBIT_METRIC,
    )
  )
    out.push(`route "prohibit default table ${table}" missing`);
  const viaTun = parse<{ dst?: string }[]>(a.tunRoutes) ?? [];
  const proxy = parse<{ dst?: string }[]>(a.proxy) ?? [];
  // Shared-address mode routes its internal address instead and has no proxy ARP.
  const shared = p.sharedInternal !== undefined;
  const routed = shared ? [p.sharedInternal as number] : p.natAddresses;
  for (const n of routed.map(formatIpv4)) {
    if (link && !viaTun.some((r) => r.dst === n || r.dst === `${n}/32`))
      out.push(`route "${n} dev ${p.tun}" missing`);
    if (!shared && !proxy.some((r) => r.dst === n))
      out.push(`proxy ARP entry "${n} dev ${p.outsideInterface}" missing`);
  }
  if (a.nftCounters === null) out.push(`guard nft table ip tunnat_${table} missing`);
  return out;
}

function safe<T>(f: () => T[]): T[] {
  try {
    return f();
  } catch {
    return [];
  }
}

/** Packets dropped at the TUN's queue (the kernel's tx_dropped of the TUN), or null. */
export function tunTxDropped(linkJson: string | null): number | null {
  if (linkJson === null) return null;
  try {
    const l = (JSON.parse(linkJson) as LinkJson[])[0];
    return l?.stats64?.tx?.dropped ?? null;
  } catch {
    return null;
  }
}

export type GuardCounters = Record<GuardReason, { packets: number; bytes: number }>;

/** Polls the kernel state forwarding needs, off the data path; answers from its cache. */
export class KernelMonitor {
  /** null until the first poll; else what is missing (empty = nothing). */
  problems: string[] | null = null;
  /** The guard's drop counters at the last read (null: no guard, or not read yet). */
  guardCounters: GuardCounters | null = null;
  /** The data path read nothing while the TUN queue dropped packets (between two polls). */
  stalled: string | null = null;
  private timer: ReturnType<typeof setInterval> | undefined;
  private inFlight: Promise<void> | null = null;
  private lastPoll = 0;
  private lastDropped: number | null = null;
  private lastRead = -1;

  constructor(
    private readonly expect: KernelExpect,
    private readonly runner: Runner,
    private readonly guard: Guard | null,
    /** Packets the data loop has read so far. */
    private readonly packetsRead: () => number,
    readonly intervalMs = 2000,
  ) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.poll(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Poll now (one at a time: a poll in flight is shared). */
  poll(): Promise<void> {
    this.inFlight ??= this.pollOnce().finally(() => {
      this.inFlight = null;
      this.lastPoll = performance.now();
    });
    return this.inFlight;
  }

  /** The guard counters, re-read when older than maxAgeMs (a scrape asks this). */
  async counters(maxAgeMs = 1000): Promise<GuardCounters | null> {
    if (performance.now() - this.lastPoll > maxAgeMs) await this.poll();
    return this.guardCounters;
  }

  private async pollOnce(): Promise<void> {
    const r = this.runner;
    const p = this.expect.plumbing;
    const ok = (x: Promise<string>) => x.catch(() => null);
    const none = Promise.resolve(null);
    const [link, rules, table, tunRoutes, proxy, nftCounters] = await Promise.all([
      ok(r.ip(["-j", "-s", "link", "show", "dev", this.expect.tun])),
      p ? ok(r.ip(["-j", "rule", "show"])) : none,
      p ? ok(r.ip(["-j", "route", "show", "table", String(p.table)])) : none,
      p ? ok(r.ip(["-j", "route", "show", "dev", this.expect.tun])) : none,
      p ? ok(r.ip(["-j", "neigh", "show", "proxy", "dev", p.outsideInterface])) : none,
      p && this.guard
        ? ok(r.nft(["-j", "list", "counters", "table", "ip", this.guard.nftTable]))
        : none,
    ]);
    const answers: KernelAnswers = { link, rules, table, tunRoutes, proxy, nftCounters };
    this.problems = kernelProblems(answers, this.expect);
    if (nftCounters !== null && this.guard) {
      try {
        this.guardCounters = parseCounters(nftCounters);
      } catch {
        this.guardCounters = null;
      }
    } else this.guardCounters = null;
    const dropped = tunTxDropped(link);
    const read = this.packetsRead();
    if (
      dropped !== null &&
      this.lastDropped !== null &&
      dropped > this.lastDropped &&
      read === this.lastRead
    )
      this.stalled = `data path not reading: ${dropped - this.lastDropped} packets dropped unread at the TUN`;
    else this.stalled = null;
    this.lastDropped = dropped;
    this.lastRead = read;
  }
}

/** What the data-loop half reads from a daemon. */
export interface LoopView {
  loop?: { isRunning: boolean; loopStats: { batches: number; sweeps: number } } | undefined;
  device?: unknown;
}

/**
 * The readiness check: null when forwarding, else the reasons ("; "-joined). The loop half is
 * checked at each call, the kernel half comes from the monitor's last poll.
 */
export function readinessCheck(
  d: LoopView,
  monitor: KernelMonitor | null,
  staleMs = 5000,
): () => string | null {
  let last = -1;
  let lastChange = performance.now();
  return () => {
    const why: string[] = [];
    const loop = d.loop;
    const dev = d.device as { closed?: boolean } | undefined;
    if (!loop?.isRunning) why.push("data path not running");
    else if (!dev || dev.closed === true) why.push("TUN device closed");
    else {
      const now = performance.now();
      const v = loop.loopStats.batches + loop.loopStats.sweeps;
      if (v !== last) {
        last = v;
        lastChange = now;
      } else if (now - lastChange > staleMs)
        why.push(`no batch or tick for ${Math.round((now - lastChange) / 1000)} s`);
    }
    if (monitor) {
      if (monitor.stalled) why.push(monitor.stalled);
      if (monitor.problems) why.push(...monitor.problems);
    }
    return why.length === 0 ? null : why.join("; ");
  };
}
