/**
 * What `tunnat status` adds to the stats snapshot: who this gateway is (uptime, TUN, inside
 * prefixes, NAT addresses, the settings that shape it) and its top talkers by bytes. Sent by the
 * control socket with the stats, so the CLI never reads metric names.
 */
import type { FlowTable } from "../conntrack/table.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import type { TunnatConfig } from "./config.js";

export interface TalkerRow {
  host: string;
  bytesOut: number;
  bytesIn: number;
  pktsOut: number;
  pktsIn: number;
  flows: number;
}

/** The `limit` inside hosts with the most bytes (out + in, since they entered the table). */
export function topTalkers(t: FlowTable, limit: number): TalkerRow[] {
  const rows: TalkerRow[] = [];
  t.hostTraffic((addr, pktsOut, bytesOut, pktsIn, bytesIn) => {
    rows.push({ host: formatIpv4(addr), bytesOut, bytesIn, pktsOut, pktsIn, flows: 0 });
  });
  rows.sort((a, b) => b.bytesOut + b.bytesIn - (a.bytesOut + a.bytesIn));
  const top = rows.slice(0, limit);
  const byHost = new Map(top.map((r) => [r.host, r]));
  for (let f = 0; f < t.capacity; f++) {
    if (t.proto(f) === 0) continue;
    const r = byHost.get(formatIpv4(t.iaddr(f)));
    if (r) r.flows++;
  }
  return top;
}

export function gatewayInfo(cfg: TunnatConfig, uptimeSeconds: number, tun: string | undefined) {
  return {
    uptimeSeconds,
    pid: process.pid,
    tun: tun ?? cfg.control.tun,
    inside: cfg.nat.inside.map(formatCidr),
    natAddresses: cfg.nat.natAddresses.map(formatIpv4),
    manageRoutes: cfg.control.manageRoutes,
    preset: cfg.control.preset,
    mapping: cfg.nat.mapping,
    filtering: cfg.nat.filtering,
    metrics: `${cfg.control.metrics.host}:${cfg.control.metrics.port}`,
  };
}
