/**
 * The counters `tunnat stats` prints, grouped: the same numbers /metrics exports, read from the
 * same Observed (observed.ts), as one JSON object the control socket sends.
 */
import { DROP_REASON_NAMES } from "../nat/stats.js";
import { type Observed, portUsage } from "./observed.js";

export function statsSnapshot(o: Observed): Record<string, unknown> {
  const s = o.stats;
  const nat: Record<string, number> = {};
  for (const [k, v] of Object.entries(s)) if (typeof v === "number") nat[k] = v;
  const drops: Record<string, number> = {};
  // camelCase like every other key here (the metric label value is the snake_case name).
  DROP_REASON_NAMES.forEach((r, i) => {
    drops[r.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase())] = s.drops[i] ?? 0;
  });
  const t = o.table;
  const out: Record<string, unknown> = {
    nat,
    drops,
    table: {
      flows: t.active,
      capacity: t.capacity,
      mappings: t.mappings,
      insideHosts: t.hosts.count,
      insideHostsCapacity: t.hosts.maxHosts,
    },
    ports: portUsage(t, o.outsideAddress),
  };
  const ls = o.loopStats;
  out.datapath = {
    batches: ls.batches,
    packets: ls.packets,
    written: ls.written,
    writeDrops: ls.writeDrops,
    batchSeconds: ls.batchSeconds,
    sweeps: ls.sweeps,
  };
  if (o.mappingLog) out.mappingLog = { lines: o.mappingLog.lines, dropped: o.mappingLog.dropped };
  const guard = o.lastGuardDrops?.();
  if (guard)
    out.guardDrops = Object.fromEntries(Object.entries(guard).map(([k, v]) => [k, v.packets]));
  // A multi-queue TUN: one row per queue (io/queues.ts).
  const queues = o.tunQueues?.() ?? null;
  if (queues) out.tunQueues = queues;
  const tun = o.tunCounters?.() ?? null;
  if (tun)
    // The TUN's own kernel counters: to_daemon drops are packets lost before tunnat could read them.
    out.tun = {
      name: o.tunName,
      txQueueLen: tun.txQueueLen,
      packetsToDaemon: tun.toDaemon.packets,
      droppedToDaemon: tun.toDaemon.dropped,
      errorsToDaemon: tun.toDaemon.errors,
      fifoErrorsToDaemon: tun.toDaemon.fifoErrors,
      packetsFromDaemon: tun.fromDaemon.packets,
      droppedFromDaemon: tun.fromDaemon.dropped,
      errorsFromDaemon: tun.fromDaemon.errors,
      fifoErrorsFromDaemon: tun.fromDaemon.fifoErrors,
    };
  if (o.ha) out.ha = o.ha();
  const reload = o.lastReload?.();
  if (reload) out.lastReload = reload;
  out.ready = o.readiness ? o.readiness() === null : true;
  return out;
}
