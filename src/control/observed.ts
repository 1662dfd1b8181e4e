/**
 * What the control plane's readers see of a running gateway: the metrics catalogue (metrics.ts),
 * `tunnat stats` (stats-snapshot.ts) and the control socket read an `Observed`, a narrow view the
 * composition root (daemon.ts) builds, never the Daemon itself. Unit tests build one by hand.
 *
 * Also the one derivation both metrics and `tunnat stats` need: port usage per NAT address and
 * protocol.
 */
import { PROTOCOLS as PROTOCOL_TABLE } from "../base/protocols.js";
import type { FlowTable } from "../conntrack/table.js";
import type { LoopStats } from "../datapath/loop.js";
import type { HaSnapshot } from "../ha/snapshot.js";
import type { QueueStats } from "../io/queues.js";
import type { NatStats } from "../nat/stats.js";
import { formatIpv4 } from "../wire/addr.js";
import type { SettingChange } from "./config.js";
import type { TableStateStats } from "./table-keeper.js";
import type { TunCounters } from "./tun-stats.js";

/** [number, name] per protocol, derived from base/protocols.ts. */
export const PROTOCOLS: readonly [number, string][] = PROTOCOL_TABLE.map((p) => [p.number, p.name]);

/** The outcome of a SIGHUP reload. */
export interface ReloadResult {
  /** When (ISO 8601). */
  at: string;
  /** Settings that changed and took effect. */
  applied: SettingChange[];
  /** Settings that changed but keep their old value until a restart. */
  needRestart: SettingChange[];
}

/** What the readers read. Optional parts are absent when the daemon does not have them. */
export interface Observed {
  stats: NatStats;
  table: FlowTable;
  loopStats: LoopStats;
  /** null when forwarding, else why not (the /readyz answer). */
  readiness?: () => string | null;
  mappingLog?: { readonly lines: number; readonly dropped: number } | undefined;
  /** The guard's drop counters by reason, re-read when stale (a scrape; readiness.ts). */
  guardDrops?: () => Promise<Record<string, { packets: number }> | null>;
  /** The guard's drop counters as last read, without a read (`tunnat stats`). */
  lastGuardDrops?: () => Record<string, { packets: number }> | null;
  /** The TUN's name and its own kernel counters (tun-stats.ts), null when unreadable. */
  tunName?: string;
  tunCounters?: () => TunCounters | null;
  /** Per-queue counters of a multi-queue TUN (io/queues.ts), null with one queue. */
  tunQueues?: () => QueueStats[] | null;
  /** What the last SIGHUP did, if there was one. */
  lastReload?: () => ReloadResult | undefined;
  /** An HA pair's state and sync counters (src/ha), when this gateway is one of a pair. */
  ha?: (() => HaSnapshot) | undefined;
  /** Restore and checkpoint figures of the table state file (table-keeper.ts). */
  tableState?: TableStateStats;
}

export interface PortUsage {
  natAddress: string;
  protocol: string;
  used: number;
  free: number;
}

/** Outside ports in use and free, per NAT address and protocol, in pool and protocol order. */
export function portUsage(t: FlowTable): PortUsage[] {
  const rows: PortUsage[] = [];
  for (let a = 0; a < t.pool.size; a++) {
    const natAddress = formatIpv4(t.pool.addrs[a] ?? 0);
    for (const [p, protocol] of PROTOCOLS)
      rows.push({ natAddress, protocol, ...t.portUsage(a, p) });
  }
  return rows;
}
