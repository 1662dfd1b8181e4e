/**
 * What the control plane's readers see of a running gateway: the metrics catalogue (metrics.ts),
 * `tunnat stats` (stats-snapshot.ts) and the control socket read an `Observed`, a narrow view the
 * composition root (daemon.ts) builds, never the Daemon itself. Unit tests build one by hand.
 *
 * Also the one derivation both metrics and `tunnat stats` need: port usage per NAT address and
 * protocol, each address shown as the internet sees it (`outsideAddress`).
 */
import { PROTOCOLS as PROTOCOL_TABLE } from "../base/protocols.js";
import type { FlowTable } from "../conntrack/table.js";
import type { LoopStats } from "../datapath/loop.js";
import type { HaSnapshot } from "../ha/snapshot.js";
import type { QueueStats } from "../io/queues.js";
import type { EgressPolicy } from "../nat/egress.js";
import type { Forwards } from "../nat/forwards.js";
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
  /** Reload outcomes since start (tunnat_config_reloads_total and the last-reload gauges). */
  reloads?: () => ReloadCounts;
  /** Settings tunnat_config_info shows (fixed until a restart). */
  config?: ConfigInfo;
  /** The egress rules in force (a reload swaps them) and the static forwards. */
  egress?: () => EgressPolicy;
  forwards?: Forwards;
  /**
   * An outside address of the table as operators see it (shared-address.ts shownAddress: in
   * shared-address mode the shared address, not the internal one); absent = as is.
   */
  outsideAddress?: (addr: number) => number;
  /** An HA pair's state and sync counters (src/ha), when this gateway is one of a pair. */
  ha?: (() => HaSnapshot) | undefined;
  /** Restore and checkpoint figures of the table state file (table-keeper.ts). */
  tableState?: TableStateStats;
}

export interface ReloadCounts {
  succeeded: number;
  failed: number;
  /** Whether the last reload failed (false when there was none). */
  lastFailed: boolean;
  /** Unix seconds of the start or of the last reload that succeeded. */
  lastSuccessAt: number;
}

interface ConfigInfo {
  /** managed (tunnat installs routes, rules, guard) or unmanaged (--no-manage-routes). */
  mode: "managed" | "unmanaged";
  mapping: string;
  filtering: string;
  preset: string;
}

export interface PortUsage {
  natAddress: string;
  protocol: string;
  used: number;
  free: number;
}

/** Outside ports in use and free, per NAT address and protocol, in pool and protocol order. */
export function portUsage(t: FlowTable, shown: (addr: number) => number = (a) => a): PortUsage[] {
  const rows: PortUsage[] = [];
  for (let a = 0; a < t.pool.size; a++) {
    const natAddress = formatIpv4(shown(t.pool.addrs[a] ?? 0));
    for (const [p, protocol] of PROTOCOLS)
      rows.push({ natAddress, protocol, ...t.portUsage(a, p) });
  }
  return rows;
}
