/**
 * The metric catalogue: every tunnat metric, its name, help text and what it reads, in one place
 * (the kinds of metric are in metric-kinds.ts). It reads an Observed (observed.ts), never the
 * Daemon; docs/observability.md documents every name registered here, and a unit test holds the
 * two in step. Each metric is read from the core's plain counters at scrape time, so the packet
 * path never calls prom-client.
 *
 * The AWS NAT Gateway CloudWatch set appears under Prometheus names, with per-inside-host traffic
 * bounded to the top N hosts (top-hosts.ts), table and port utilisation, the data path's own
 * counters, event-loop delay, and prom-client's default process metrics. A 1 s timer samples the
 * byte and packet totals for the peak rates (peak.ts); that is the only periodic work, and it
 * costs four additions.
 *
 * To add a metric: one entry below, one line in docs/observability.md. When it reads something
 * the Observed does not have yet, add that field to observed.ts and to Daemon.observed().
 */
import { type IntervalHistogram, monitorEventLoopDelay, performance } from "node:perf_hooks";
import { Counter, collectDefaultMetrics, Registry } from "prom-client";
import { PROTOCOLS as PROTOCOL_TABLE } from "../base/protocols.js";
import { BATCH_SIZE_BUCKETS } from "../datapath/loop.js";
import { registerHaMetrics } from "../ha/metrics.js";
import type { QueueStats } from "../io/queues.js";
import { DROP_REASON_NAMES } from "../nat/stats.js";
import { GUARD_REASONS } from "./guard.js";
import {
  counter,
  gauge,
  type Labels,
  labelledCounter,
  labelledGauge,
  rawMetric,
  type Sample,
} from "./metric-kinds.js";
import { type Observed, portUsage } from "./observed.js";
import { PeakRate } from "./peak.js";
import { DEFAULT_TOP_HOSTS, TopHosts } from "./top-hosts.js";
import type { TunCounters, TunDirection } from "./tun-stats.js";

export interface MetricsOptions {
  /** Inside hosts with a series of their own (the rest are summed as host="other"). */
  topHosts?: number;
  /** Add prom-client's default process metrics (off in some unit tests for speed). */
  defaultMetrics?: boolean;
}

const MISNAMED_DEFAULTS = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

export interface TunnatMetrics {
  readonly registry: Registry;
  /** Take one peak-rate sample now (the timer does this every second). */
  sample(): void;
  /** Stop the sampler and the event-loop monitor. */
  stop(): void;
}

/** Build the registry over `o`. Starts the 1 s peak sampler and the event-loop monitor. */
export function createMetrics(o: Observed, opts: MetricsOptions = {}): TunnatMetrics {
  const reg = new Registry();
  const s = o.stats;
  const t = o.table;

  // --- the AWS NAT Gateway set
  const dirs: [string, string, () => number, () => number][] = [
    [
      "in_from_source",
      "received from inside hosts",
      () => s.bytesInFromSource,
      () => s.packetsInFromSource,
    ],
    [
      "out_to_destination",
      "sent to destinations outside",
      () => s.bytesOutToDestination,
      () => s.packetsOutToDestination,
    ],
    [
      "in_from_destination",
      "received from destinations outside",
      () => s.bytesInFromDestination,
      () => s.packetsInFromDestination,
    ],
    [
      "out_to_source",
      "sent back to inside hosts",
      () => s.bytesOutToSource,
      () => s.packetsOutToSource,
    ],
  ];
  for (const [dir, what, bytes, packets] of dirs) {
    counter(
      reg,
      `tunnat_bytes_${dir}_total`,
      `IP bytes ${what} (AWS NAT Gateway Bytes${camel(dir)}); GSO super-packets count as the segments they stand for.`,
      bytes,
    );
    counter(
      reg,
      `tunnat_packets_${dir}_total`,
      `IP packets ${what} (AWS NAT Gateway Packets${camel(dir)}).`,
      packets,
    );
  }
  gauge(
    reg,
    "tunnat_active_connections",
    "TCP connections in ESTABLISHED now (AWS NAT Gateway ActiveConnectionCount).",
    () => s.tcpEstablishedNow,
  );
  labelledGauge(
    reg,
    "tunnat_flows",
    "Live flows in the connection table by protocol.",
    ["protocol"],
    // Counted incrementally by the table (ConntrackStats.flowsByState): no walk per scrape.
    () => PROTOCOL_TABLE.map((p) => [{ protocol: p.name }, t.stats.flowsOf(p.slot)]),
  );
  counter(
    reg,
    "tunnat_connection_attempts_total",
    "Outbound TCP SYNs that opened a flow (AWS NAT Gateway ConnectionAttemptCount).",
    () => s.connectionAttempts,
  );
  counter(
    reg,
    "tunnat_connection_established_total",
    "TCP flows that reached ESTABLISHED (AWS NAT Gateway ConnectionEstablishedCount).",
    () => s.connectionsEstablished,
  );
  counter(
    reg,
    "tunnat_port_allocation_errors_total",
    "New mappings refused because no outside port was free (AWS NAT Gateway ErrorPortAllocation).",
    () => s.portAllocationErrors,
  );
  counter(
    reg,
    "tunnat_idle_timeouts_total",
    "Flows removed because their idle timer ran out (AWS NAT Gateway IdleTimeoutCount).",
    () => s.idleTimeouts,
  );
  labelledCounter(
    reg,
    "tunnat_packets_dropped_total",
    "Packets dropped, by reason (AWS NAT Gateway PacketsDropCount).",
    ["reason"],
    () => DROP_REASON_NAMES.map((reason, i) => [{ reason }, s.drops[i] ?? 0]),
  );
  const peak = new PeakRate();
  gauge(
    reg,
    "tunnat_peak_bytes_per_second",
    "Highest 10-second average of bytes received (from inside and outside) per second over the last minute (AWS NAT Gateway PeakBytesPerSecond).",
    () => peak.peak()[0],
  );
  gauge(
    reg,
    "tunnat_peak_packets_per_second",
    "Highest 10-second average of packets received per second over the last minute (AWS NAT Gateway PeakPacketsPerSecond).",
    () => peak.peak()[1],
  );

  // --- more of the table's life
  const more: [string, string, () => number][] = [
    ["tunnat_flows_created_total", "Flows created.", () => s.flowsCreated],
    [
      "tunnat_flows_removed_total",
      "Flows removed (expiry, eviction, shutdown).",
      () => s.flowsRemoved,
    ],
    ["tunnat_mappings_created_total", "NAT mappings created.", () => s.mappingsCreated],
    ["tunnat_mappings_removed_total", "NAT mappings removed.", () => s.mappingsRemoved],
    [
      "tunnat_flow_evictions_total",
      "Unreplied flows evicted to make room in a full table.",
      () => s.evictions,
    ],
    [
      "tunnat_table_full_events_total",
      "Times a new flow met a full table.",
      () => s.tableFullEvents,
    ],
    [
      "tunnat_hairpin_packets_total",
      "Packets sent out and back in to a NAT address (hairpinning, RFC 4787 REQ-9).",
      () => s.hairpinPackets,
    ],
    [
      "tunnat_icmp_errors_translated_total",
      "ICMP errors translated in either direction (RFC 5508).",
      () => s.icmpErrorsTranslated,
    ],
    [
      "tunnat_replies_generated_total",
      "Packets the gateway generated itself (RSTs for expired flows, ICMP errors).",
      () => s.repliesGenerated,
    ],
    [
      "tunnat_fragments_held_total",
      "Fragments that arrived before their first fragment and were held for it (RFC 4787 REQ-14).",
      () => s.fragmentsHeld,
    ],
    [
      "tunnat_fragments_released_total",
      "Held fragments translated and sent once their first fragment passed.",
      () => s.fragmentsReleased,
    ],
  ];
  for (const [name, help, read] of more) counter(reg, name, help, read);

  // --- per inside host (bounded)
  const top = new TopHosts(t, opts.topHosts ?? DEFAULT_TOP_HOSTS);
  let hostSeries = top.collect();
  labelledCounter(
    reg,
    "tunnat_host_bytes_total",
    `IP bytes per inside host, direction out (host to internet) or in (internet to host); the top ${top.limit} hosts by bytes, the rest summed as host="other".`,
    ["host", "direction"],
    () => {
      // Both per-host metrics are read in one scrape; refresh once, from this one.
      hostSeries = top.collect();
      return hostSeries.flatMap((h): [Labels, number][] => [
        [{ host: h.host, direction: "out" }, h.bytesOut],
        [{ host: h.host, direction: "in" }, h.bytesIn],
      ]);
    },
  );
  labelledCounter(
    reg,
    "tunnat_host_packets_total",
    `IP packets per inside host and direction; the same ${top.limit} hosts as tunnat_host_bytes_total, the rest as host="other".`,
    ["host", "direction"],
    () =>
      hostSeries.flatMap((h): [Labels, number][] => [
        [{ host: h.host, direction: "out" }, h.pktsOut],
        [{ host: h.host, direction: "in" }, h.pktsIn],
      ]),
  );

  // --- utilisation
  gauge(
    reg,
    "tunnat_flows_capacity",
    "Flows the connection table can hold (maxFlows).",
    () => t.capacity,
  );
  gauge(reg, "tunnat_mappings", "Live NAT mappings.", () => t.mappings);
  gauge(reg, "tunnat_inside_hosts", "Inside hosts with live flows.", () => t.hosts.count);
  gauge(
    reg,
    "tunnat_inside_hosts_capacity",
    "Inside hosts the host table can track.",
    () => t.hosts.maxHosts,
  );
  labelledGauge(
    reg,
    "tunnat_nat_ports_used",
    "Outside ports (ICMP: echo identifiers) in use per NAT address and protocol.",
    ["nat_address", "protocol"],
    () => portUsage(t).map((u) => [{ nat_address: u.natAddress, protocol: u.protocol }, u.used]),
  );
  labelledGauge(
    reg,
    "tunnat_nat_ports_free",
    "Outside ports (ICMP: echo identifiers) free per NAT address and protocol.",
    ["nat_address", "protocol"],
    () => portUsage(t).map((u) => [{ nat_address: u.natAddress, protocol: u.protocol }, u.free]),
  );

  // --- the data path
  const ls = o.loopStats;
  rawMetric(
    reg,
    "tunnat_datapath_batch_size",
    "Packets per batch read from the TUN device.",
    "histogram",
    () => {
      const out: Sample[] = [];
      let cum = 0;
      BATCH_SIZE_BUCKETS.forEach((le, i) => {
        cum += ls.batchSizeCounts[i] ?? 0;
        out.push({
          metricName: "tunnat_datapath_batch_size_bucket",
          labels: { le: String(le) },
          value: cum,
        });
      });
      cum += ls.batchSizeCounts[BATCH_SIZE_BUCKETS.length] ?? 0;
      out.push({
        metricName: "tunnat_datapath_batch_size_bucket",
        labels: { le: "+Inf" },
        value: cum,
      });
      out.push({ metricName: "tunnat_datapath_batch_size_sum", labels: {}, value: ls.packets });
      out.push({ metricName: "tunnat_datapath_batch_size_count", labels: {}, value: cum });
      return out;
    },
  );
  rawMetric(
    reg,
    "tunnat_datapath_batch_duration_seconds",
    "Time spent translating and writing batches (sum and count; rate(sum)/rate(count) is the time per batch).",
    "summary",
    () => [
      {
        metricName: "tunnat_datapath_batch_duration_seconds_sum",
        labels: {},
        value: ls.batchSeconds,
      },
      { metricName: "tunnat_datapath_batch_duration_seconds_count", labels: {}, value: ls.batches },
    ],
  );
  counter(
    reg,
    "tunnat_datapath_packets_read_total",
    "Packets read from the TUN device.",
    () => ls.packets,
  );
  counter(
    reg,
    "tunnat_datapath_packets_written_total",
    "Packets written back to the TUN device.",
    () => ls.written,
  );
  counter(
    reg,
    "tunnat_datapath_write_drops_total",
    "Translated packets the TUN device refused (ENOBUFS, EAGAIN, or rejected by the kernel).",
    () => ls.writeDrops,
  );
  counter(
    reg,
    "tunnat_datapath_sweeps_total",
    "Expiry sweep ticks of the data loop.",
    () => ls.sweeps,
  );
  const lag: IntervalHistogram = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  let lagP99 = 0;
  gauge(
    reg,
    "tunnat_event_loop_delay_max_seconds",
    "Longest event-loop delay since the previous scrape (a stalled loop stalls forwarding).",
    () => {
      const max = lag.count > 0 ? lag.max / 1e9 : 0;
      lagP99 = lag.count > 0 ? lag.percentile(99) / 1e9 : 0;
      lag.reset();
      return max;
    },
  );
  gauge(
    reg,
    "tunnat_event_loop_delay_p99_seconds",
    "99th percentile of event-loop delay since the previous scrape.",
    () => lagP99,
  );

  // --- the TUN device's own kernel counters: what was lost before the daemon could see it
  if (o.tunCounters) {
    const readTun = o.tunCounters;
    // One sysfs read serves all the TUN metrics of a scrape (they are collected one after another).
    let tunAt = -1;
    let tun: TunCounters | null = null;
    const tunNow = (): TunCounters | null => {
      const now = performance.now();
      if (now - tunAt > 100) {
        tun = readTun();
        tunAt = now;
      }
      return tun;
    };
    const byDirection = (k: keyof TunDirection) => (): [Labels, number][] => {
      const c = tunNow();
      return c
        ? [
            [{ direction: "to_daemon" }, c.toDaemon[k]],
            [{ direction: "from_daemon" }, c.fromDaemon[k]],
          ]
        : [];
    };
    const tunMetrics: [string, string, keyof TunDirection][] = [
      [
        "tunnat_tun_packets_total",
        "Packets the kernel queued on the TUN for the daemon (to_daemon, its tx) or took from the daemon (from_daemon, its rx).",
        "packets",
      ],
      [
        "tunnat_tun_packets_dropped_total",
        "Packets the TUN device dropped: to_daemon = its queue was full because the daemon did not read in time (never seen by tunnat); from_daemon = the kernel refused what the daemon wrote.",
        "dropped",
      ],
      [
        "tunnat_tun_errors_total",
        "Errors the kernel counted on the TUN device, by direction.",
        "errors",
      ],
      [
        "tunnat_tun_fifo_errors_total",
        "FIFO errors the kernel counted on the TUN device, by direction.",
        "fifoErrors",
      ],
    ];
    for (const [name, help, k] of tunMetrics)
      labelledCounter(reg, name, help, ["direction"], byDirection(k));
    // Raw, so that no sample (rather than a 0) is exported while the TUN cannot be read.
    rawMetric(
      reg,
      "tunnat_tun_tx_queue_length",
      "Packets the TUN queues for the daemon before it drops (the device's txqueuelen).",
      "gauge",
      () => {
        const c = tunNow();
        return c ? [{ labels: {}, value: c.txQueueLen }] : [];
      },
    );
  }

  // --- the queues of a multi-queue TUN (io/queues.ts): how the kernel spread the flows
  if (o.tunQueues) registerQueueMetrics(reg, o.tunQueues);

  // --- the daemon itself
  gauge(reg, "tunnat_ready", "1 while the data path is forwarding (as /readyz).", () =>
    o.readiness ? (o.readiness() === null ? 1 : 0) : 1,
  );
  if (o.guardDrops) {
    const read = o.guardDrops;
    new Counter({
      name: "tunnat_guard_dropped_packets_total",
      help: `Packets the guard's nft forward chain dropped, by reason: ${GUARD_REASONS.map((r) => `${r.name} (${r.help})`).join("; ")}.`,
      labelNames: ["reason"],
      registers: [reg],
      async collect() {
        const c = await read();
        this.reset();
        for (const r of GUARD_REASONS) this.inc({ reason: r.name }, c?.[r.name]?.packets ?? 0);
      },
    });
  }
  if (o.tableState) {
    const ts = o.tableState;
    const g = (name: string, help: string, read: () => number) => gauge(reg, name, help, read);
    g(
      "tunnat_state_restore_seconds",
      "Time the table restore at start took.",
      () => ts.restoreSeconds,
    );
    g(
      "tunnat_state_restored_flows",
      "Flows restored from the table state file at start.",
      () => ts.restoredFlows,
    );
    g(
      "tunnat_state_restore_expired_flows",
      "Saved flows not restored because their lifetime ran out while no daemon ran.",
      () => ts.restoreExpiredFlows,
    );
    g(
      "tunnat_state_restore_refused",
      "1 when the table state file was refused at start (corrupt, other version or configuration; the log says why).",
      () => ts.restoreRefused,
    );
    counter(
      reg,
      "tunnat_state_checkpoints_total",
      "Table checkpoints written.",
      () => ts.checkpoints,
    );
    counter(
      reg,
      "tunnat_state_checkpoint_failures_total",
      "Table checkpoints that failed (the log says why).",
      () => ts.checkpointFailures,
    );
    g(
      "tunnat_state_checkpoint_seconds",
      "Duration of the last table checkpoint.",
      () => ts.lastCheckpointSeconds,
    );
    g(
      "tunnat_state_checkpoint_max_slice_seconds",
      "Longest the last checkpoint held the event loop (one slice of the table).",
      () => ts.lastCheckpointMaxSliceSeconds,
    );
    g(
      "tunnat_state_checkpoint_flows",
      "Flows in the last table checkpoint.",
      () => ts.lastCheckpointFlows,
    );
    g(
      "tunnat_state_last_save_timestamp_seconds",
      "Wall-clock time of the last table checkpoint or save (0 = none yet).",
      () => ts.lastSaveTime,
    );
  }
  counter(
    reg,
    "tunnat_mapping_log_lines_total",
    "Lines written to the mapping log (RFC 6888 §4).",
    () => o.mappingLog?.lines ?? 0,
  );
  counter(
    reg,
    "tunnat_mapping_log_dropped_total",
    "Mapping log lines dropped because the destination could not keep up.",
    () => o.mappingLog?.dropped ?? 0,
  );
  if (opts.defaultMetrics !== false) {
    collectDefaultMetrics({ register: reg });
    // prom-client names three gauges *_total, which `promtool check metrics` rejects (only
    // counters may end in _total); their per-type siblings (nodejs_active_handles etc.) remain.
    for (const n of MISNAMED_DEFAULTS) reg.removeSingleMetric(n);
  }

  // --- an HA pair's gateway (src/ha)
  if (o.ha) registerHaMetrics(reg, o.ha);

  const sample = () =>
    peak.sample(
      performance.now() / 1000,
      s.bytesInFromSource + s.bytesInFromDestination,
      s.packetsInFromSource + s.packetsInFromDestination,
    );
  sample();
  const timer = setInterval(sample, 1000);
  timer.unref();
  return {
    registry: reg,
    sample,
    stop() {
      clearInterval(timer);
      lag.disable();
    },
  };
}

function registerQueueMetrics(reg: Registry, read: () => QueueStats[] | null): void {
  // One read of the native counters serves every queue metric of a scrape.
  let at = -1;
  let rows: QueueStats[] | null = null;
  const now = (): QueueStats[] => {
    const t = performance.now();
    if (t - at > 100) {
      rows = read();
      at = t;
    }
    return rows ?? [];
  };
  const per = (f: (r: QueueStats) => [Labels, number][]) => (): [Labels, number][] =>
    now().flatMap(f);
  const q = (r: QueueStats) => String(r.queue);
  labelledCounter(
    reg,
    "tunnat_tun_queue_packets_total",
    "Packets per TUN queue: read (the kernel chose this queue for them) and written (by this queue's I/O thread).",
    ["queue", "direction"],
    per((r) => [
      [{ queue: q(r), direction: "read" }, r.read],
      [{ queue: q(r), direction: "written" }, r.written],
    ]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_write_drops_total",
    "Translated packets a queue's I/O thread could not write: queue_full (EAGAIN/ENOBUFS), rejected (EINVAL/EIO for that packet), oversize (a length beyond the slot).",
    ["queue", "reason"],
    per((r) => [
      [{ queue: q(r), reason: "queue_full" }, r.writeDropped],
      [{ queue: q(r), reason: "rejected" }, r.writeRejected],
      [{ queue: q(r), reason: "oversize" }, r.writeOversize],
    ]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_ring_full_total",
    "Times a queue's ring to the translator was full, so its I/O thread stopped reading until the translator caught up (the kernel queue then fills: see tunnat_tun_packets_dropped_total).",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.ringFull]]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_wakeups_total",
    "Times a queue's I/O thread slept in poll() and was woken.",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.wakeups]]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_spin_hits_total",
    "Times a queue's I/O thread found work while spinning (--poll-us), a wakeup saved.",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.spinHits]]),
  );
}

function camel(dir: string): string {
  return dir
    .split("_")
    .map((w) => (w[0] ?? "").toUpperCase() + w.slice(1))
    .join("");
}
