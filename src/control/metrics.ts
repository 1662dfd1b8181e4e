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
 * Names follow https://prometheus.io/docs/practices/naming/: the unit (bytes, packets, seconds,
 * lines) last before `_total`. The names before issue 13 (`tunnat_bytes_in_from_source_total`
 * and so on) are registered as well, for one release, when `metricsLegacyNames` is set
 * (`--metrics-legacy-names`): each renamed entry below names its old name beside the new one.
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
import type { EgressPolicy } from "../nat/egress.js";
import { DROP_REASON_NAMES } from "../nat/stats.js";
import { buildInfo } from "./build-info.js";
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
  /** Also register the names used before the unit-suffix renaming (for one release). */
  legacyNames?: boolean;
}

/**
 * Drop reasons that are not drops of traffic meant to cross: inbound packets nobody inside asked
 * for (`unsolicited`, internet background noise) or that the filtering policy refuses (`filtered`).
 * They go to tunnat_inbound_refused_packets_total, so that tunnat_dropped_packets_total (the
 * counterpart of PacketsDropCount) stays 0 on a healthy gateway and a "> 0" alarm means something.
 */
const INBOUND_REFUSED_REASONS: ReadonlySet<string> = new Set(["unsolicited", "filtered"]);

/** Upper bounds (seconds) of the event-loop delay histogram. */
const LOOP_DELAY_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
] as const;
/** How often the delay probe runs; each run is one observation of how late it fired. */
const LOOP_PROBE_MS = 50;
/** The fixed window of the legacy max/p99 gauges, reset by the sampler (never by a scrape). */
const LEGACY_WINDOW_S = 10;

const MISNAMED_DEFAULTS = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];
/**
 * prom-client's event-loop lag gauges reset their histogram on every scrape, so two Prometheus
 * servers scraping one daemon each see half of it; tunnat_event_loop_delay_seconds replaces them.
 */
const RESET_ON_SCRAPE_DEFAULTS = [
  "nodejs_eventloop_lag_seconds",
  "nodejs_eventloop_lag_min_seconds",
  "nodejs_eventloop_lag_max_seconds",
  "nodejs_eventloop_lag_mean_seconds",
  "nodejs_eventloop_lag_stddev_seconds",
  "nodejs_eventloop_lag_p50_seconds",
  "nodejs_eventloop_lag_p90_seconds",
  "nodejs_eventloop_lag_p99_seconds",
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
  const legacy = opts.legacyNames === true;
  /** `make` under the new name, and under the old one too while legacy names are on. */
  const renamed = (name: string, old: string, make: (name: string, note: string) => void) => {
    make(name, "");
    if (legacy) make(old, ` Deprecated name of ${name}, removed in the next release.`);
  };

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
    renamed(`tunnat_${dir}_bytes_total`, `tunnat_bytes_${dir}_total`, (n, note) =>
      counter(
        reg,
        n,
        `IP bytes ${what} (AWS NAT Gateway Bytes${camel(dir)}); GSO super-packets count as the segments they stand for.${note}`,
        bytes,
      ),
    );
    renamed(`tunnat_${dir}_packets_total`, `tunnat_packets_${dir}_total`, (n, note) =>
      counter(reg, n, `IP packets ${what} (AWS NAT Gateway Packets${camel(dir)}).${note}`, packets),
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
  labelledCounter(
    reg,
    "tunnat_idle_timeouts_total",
    'Flows removed because their idle timer ran out, by protocol (AWS NAT Gateway IdleTimeoutCount counts TCP only: compare protocol="tcp").',
    ["protocol"],
    () => PROTOCOL_TABLE.map((p) => [{ protocol: p.name }, s.idleTimeoutsBySlot[p.slot] ?? 0]),
  );
  const drops = (keep: (reason: string) => boolean) => (): [Labels, number][] =>
    DROP_REASON_NAMES.flatMap((reason, i): [Labels, number][] =>
      keep(reason) ? [[{ reason }, s.drops[i] ?? 0]] : [],
    );
  labelledCounter(
    reg,
    "tunnat_dropped_packets_total",
    "Packets meant to cross the gateway that it dropped, by reason (AWS NAT Gateway PacketsDropCount); unsolicited and filtered inbound packets are in tunnat_inbound_refused_packets_total instead.",
    ["reason"],
    drops((r) => !INBOUND_REFUSED_REASONS.has(r)),
  );
  labelledCounter(
    reg,
    "tunnat_inbound_refused_packets_total",
    "Inbound packets refused because no inside host asked for them: unsolicited (no mapping; internet background noise) or filtered (a mapping exists but the filtering policy refuses the sender).",
    ["reason"],
    drops((r) => INBOUND_REFUSED_REASONS.has(r)),
  );
  if (legacy)
    labelledCounter(
      reg,
      "tunnat_packets_dropped_total",
      "Packets dropped, by reason, unsolicited and filtered inbound included. Deprecated: split into tunnat_dropped_packets_total and tunnat_inbound_refused_packets_total, removed in the next release.",
      ["reason"],
      drops(() => true),
    );
  // --- egress policy and static forwards (nat/egress.ts, nat/forwards.ts)
  const egress = o.egress;
  if (egress) {
    const perRule = (read: (p: EgressPolicy, i: number) => number, denyOnly: boolean) => () => {
      const p = egress();
      const out: [Labels, number][] = [];
      p.rules.forEach((r, i) => {
        if (denyOnly && r.allow) return;
        out.push([
          { rule: String(i + 1), action: r.allow ? "allow" : "deny", text: r.text },
          read(p, i),
        ]);
      });
      return out;
    };
    labelledCounter(
      reg,
      "tunnat_egress_rule_flows_total",
      "New flows an egress rule matched, by rule (number, action and text as configured): refused for a deny rule, let through for an allow rule. Since the rules were last loaded.",
      ["rule", "action", "text"],
      perRule((p, i) => p.matched[i] ?? 0, false),
    );
    labelledCounter(
      reg,
      "tunnat_egress_rule_flows_ended_total",
      "Live flows a deny rule ended when a reload (SIGHUP) brought it in.",
      ["rule", "action", "text"],
      perRule((p, i) => p.ended[i] ?? 0, true),
    );
    counter(
      reg,
      "tunnat_egress_flows_ended_total",
      "Live flows ended because reloaded egress rules deny them (all rules, since start).",
      () => s.egressFlowsEnded,
    );
    gauge(reg, "tunnat_egress_rules", "Egress rules in force.", () => egress().size);
  }
  const fw = o.forwards;
  if (fw && fw.size > 0) {
    const perForward = (a: Float64Array) => () =>
      fw.list.map((f, i): [Labels, number] => [{ forward: f.text }, a[i] ?? 0]);
    labelledCounter(
      reg,
      "tunnat_forward_flows_total",
      "Inbound connections (TCP) or UDP flows opened through a static forward.",
      ["forward"],
      perForward(fw.flows),
    );
    labelledCounter(
      reg,
      "tunnat_forward_refused_total",
      "Inbound connections to a static forward refused because the connection table was full.",
      ["forward"],
      perForward(fw.refused),
    );
    labelledCounter(
      reg,
      "tunnat_forward_packets_total",
      "Packets of static-forward flows, by direction: in = from outside to the inside host, out = its replies.",
      ["forward", "direction"],
      () =>
        fw.list.flatMap((f, i): [Labels, number][] => [
          [{ forward: f.text, direction: "in" }, fw.packetsIn[i] ?? 0],
          [{ forward: f.text, direction: "out" }, fw.packetsOut[i] ?? 0],
        ]),
    );
  }
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
      "tunnat_generated_packets_total",
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
  if (legacy)
    counter(
      reg,
      "tunnat_replies_generated_total",
      "Deprecated name of tunnat_generated_packets_total, removed in the next release.",
      () => s.repliesGenerated,
    );

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
    () =>
      portUsage(t, o.outsideAddress).map((u) => [
        { nat_address: u.natAddress, protocol: u.protocol },
        u.used,
      ]),
  );
  labelledGauge(
    reg,
    "tunnat_nat_ports_free",
    "Outside ports (ICMP: echo identifiers) free per NAT address and protocol.",
    ["nat_address", "protocol"],
    () =>
      portUsage(t, o.outsideAddress).map((u) => [
        { nat_address: u.natAddress, protocol: u.protocol },
        u.free,
      ]),
  );

  // --- the data path
  const ls = o.loopStats;
  renamed("tunnat_datapath_batch_size_packets", "tunnat_datapath_batch_size", (n, note) =>
    rawMetric(reg, n, `Packets per batch read from the TUN device.${note}`, "histogram", () =>
      histogram(n, BATCH_SIZE_BUCKETS, ls.batchSizeCounts, ls.packets),
    ),
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
  renamed("tunnat_datapath_read_packets_total", "tunnat_datapath_packets_read_total", (n, note) =>
    counter(reg, n, `Packets read from the TUN device.${note}`, () => ls.packets),
  );
  renamed(
    "tunnat_datapath_written_packets_total",
    "tunnat_datapath_packets_written_total",
    (n, note) =>
      counter(reg, n, `Packets written back to the TUN device.${note}`, () => ls.written),
  );
  renamed(
    "tunnat_datapath_write_dropped_packets_total",
    "tunnat_datapath_write_drops_total",
    (n, note) =>
      counter(
        reg,
        n,
        `Translated packets the TUN device refused (ENOBUFS, EAGAIN, or rejected by the kernel).${note}`,
        () => ls.writeDrops,
      ),
  );
  counter(
    reg,
    "tunnat_datapath_sweeps_total",
    "Expiry sweep ticks of the data loop.",
    () => ls.sweeps,
  );
  // The event loop is the data path's thread: how late it runs, and how busy it is. A probe timer
  // of the daemon's own (every 50 ms) observes how late it fired into a histogram that only
  // grows, so any number of Prometheus servers read the same series and rate() works over any
  // window; nothing resets on a scrape.
  const delayCounts = new Float64Array(LOOP_DELAY_BUCKETS.length + 1);
  let delaySum = 0;
  let due = performance.now() + LOOP_PROBE_MS;
  const probe = setInterval(() => {
    const now = performance.now();
    const late = Math.max(0, now - due) / 1000;
    due = now + LOOP_PROBE_MS;
    let b = 0;
    while (b < LOOP_DELAY_BUCKETS.length && late > (LOOP_DELAY_BUCKETS[b] ?? 0)) b++;
    delayCounts[b]++;
    delaySum += late;
  }, LOOP_PROBE_MS);
  probe.unref();
  rawMetric(
    reg,
    "tunnat_event_loop_delay_seconds",
    `How late a ${LOOP_PROBE_MS} ms timer of the daemon fired: the event loop (the data path's thread) was busy or blocked that long; cumulative since start.`,
    "histogram",
    () => histogram("tunnat_event_loop_delay_seconds", LOOP_DELAY_BUCKETS, delayCounts, delaySum),
  );
  counter(
    reg,
    "tunnat_event_loop_busy_seconds_total",
    "Time the event loop (the data path's thread: translation, I/O, timers, scrapes) was busy, from perf_hooks.eventLoopUtilization(); rate() is its busy fraction, and 1 is the ceiling of one gateway.",
    () => performance.eventLoopUtilization().active / 1000,
  );
  // The old gauges, over a fixed 10 s window the sampler closes (not the scrape).
  let lag: IntervalHistogram | null = null;
  let lagWindow = { max: 0, p99: 0 };
  let lagTicks = 0;
  if (legacy) {
    const h = monitorEventLoopDelay({ resolution: 10 });
    h.enable();
    lag = h;
    const note = " Deprecated: use tunnat_event_loop_delay_seconds; removed in the next release.";
    gauge(
      reg,
      "tunnat_event_loop_delay_max_seconds",
      `Longest event-loop delay in the last complete ${LEGACY_WINDOW_S} s window.${note}`,
      () => lagWindow.max,
    );
    gauge(
      reg,
      "tunnat_event_loop_delay_p99_seconds",
      `99th percentile of event-loop delay in the last complete ${LEGACY_WINDOW_S} s window.${note}`,
      () => lagWindow.p99,
    );
  }
  const closeLagWindow = () => {
    if (!lag || ++lagTicks < LEGACY_WINDOW_S) return;
    lagTicks = 0;
    lagWindow =
      lag.count > 0 ? { max: lag.max / 1e9, p99: lag.percentile(99) / 1e9 } : { max: 0, p99: 0 };
    lag.reset();
  };

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
    const tunMetrics: [string, string, keyof TunDirection, string?][] = [
      [
        "tunnat_tun_packets_total",
        "Packets the kernel queued on the TUN for the daemon (to_daemon, its tx) or took from the daemon (from_daemon, its rx).",
        "packets",
      ],
      [
        "tunnat_tun_dropped_packets_total",
        "Packets the TUN device dropped: to_daemon = its queue was full because the daemon did not read in time (never seen by tunnat); from_daemon = the kernel refused what the daemon wrote.",
        "dropped",
        "tunnat_tun_packets_dropped_total",
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
    for (const [name, help, k, old] of tunMetrics) {
      labelledCounter(reg, name, help, ["direction"], byDirection(k));
      if (legacy && old)
        labelledCounter(
          reg,
          old,
          `${help} Deprecated name of ${name}, removed in the next release.`,
          ["direction"],
          byDirection(k),
        );
    }
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
  renamed("tunnat_mapping_log_dropped_lines_total", "tunnat_mapping_log_dropped_total", (n, note) =>
    counter(
      reg,
      n,
      `Mapping log lines dropped because the destination could not keep up.${note}`,
      () => o.mappingLog?.dropped ?? 0,
    ),
  );
  const build = buildInfo();
  labelledGauge(
    reg,
    "tunnat_build_info",
    "Always 1; the labels say what runs: tunnat's version, the Node.js version, the git commit (unknown for an installed package without TUNNAT_COMMIT).",
    ["version", "node_version", "commit"],
    () => [[{ version: build.version, node_version: build.nodeVersion, commit: build.commit }, 1]],
  );
  if (o.config) {
    const c = o.config;
    labelledGauge(
      reg,
      "tunnat_config_info",
      "Always 1; the labels are settings that change how the gateway behaves: mode (managed: tunnat installs routes, rules and the guard; unmanaged: --no-manage-routes), mapping, filtering and preset. They change only with a restart.",
      ["mode", "mapping", "filtering", "preset"],
      () => [[{ ...c }, 1]],
    );
  }
  if (o.reloads) {
    const r = o.reloads;
    labelledCounter(
      reg,
      "tunnat_config_reloads_total",
      "Configuration reloads (SIGHUP) by result: success (the new settings were read; some may need a restart, see tunnat stats) or failure (the old settings stay).",
      ["result"],
      () => {
        const x = r();
        return [
          [{ result: "success" }, x.succeeded],
          [{ result: "failure" }, x.failed],
        ];
      },
    );
    gauge(
      reg,
      "tunnat_config_last_reload_successful",
      "1 if the last reload succeeded or there was none, 0 if it failed.",
      () => (r().lastFailed ? 0 : 1),
    );
    gauge(
      reg,
      "tunnat_config_last_reload_timestamp_seconds",
      "When the configuration was last loaded (Unix time): the start, or the last reload that succeeded.",
      () => r().lastSuccessAt,
    );
  }
  if (opts.defaultMetrics !== false) {
    collectDefaultMetrics({ register: reg });
    // prom-client names three gauges *_total, which `promtool check metrics` rejects (only
    // counters may end in _total); their per-type siblings (nodejs_active_handles etc.) remain.
    for (const n of [...MISNAMED_DEFAULTS, ...RESET_ON_SCRAPE_DEFAULTS]) reg.removeSingleMetric(n);
  }

  // --- an HA pair's gateway (src/ha)
  if (o.ha) registerHaMetrics(reg, o.ha);

  const sample = () => {
    peak.sample(
      performance.now() / 1000,
      s.bytesInFromSource + s.bytesInFromDestination,
      s.packetsInFromSource + s.packetsInFromDestination,
    );
    closeLagWindow();
  };
  sample();
  const timer = setInterval(sample, 1000);
  timer.unref();
  return {
    registry: reg,
    sample,
    stop() {
      clearInterval(timer);
      clearInterval(probe);
      lag?.disable();
    },
  };
}

/** A histogram's exposition from per-bucket (not cumulative) counts; the last count is +Inf's. */
function histogram(
  name: string,
  bounds: readonly number[],
  counts: ArrayLike<number>,
  sum: number,
): Sample[] {
  const out: Sample[] = [];
  let cum = 0;
  bounds.forEach((le, i) => {
    cum += counts[i] ?? 0;
    out.push({ metricName: `${name}_bucket`, labels: { le: String(le) }, value: cum });
  });
  cum += counts[bounds.length] ?? 0;
  out.push({ metricName: `${name}_bucket`, labels: { le: "+Inf" }, value: cum });
  out.push({ metricName: `${name}_sum`, labels: {}, value: sum });
  out.push({ metricName: `${name}_count`, labels: {}, value: cum });
  return out;
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
    "Packets per TUN queue: read (the kernel chose this queue for them) and written, by the queue's I/O thread or, while it slept, by the translator's thread (tunnat_tun_queue_inline_read_packets_total, tunnat_tun_queue_inline_written_packets_total).",
    ["queue", "direction"],
    per((r) => [
      [{ queue: q(r), direction: "read" }, r.read],
      [{ queue: q(r), direction: "written" }, r.written],
    ]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_write_dropped_packets_total",
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
  labelledCounter(
    reg,
    "tunnat_tun_queue_inline_written_packets_total",
    "Packets of tunnat_tun_queue_packets_total{direction=\"written\"} that the translator's thread wrote itself, because the queue's I/O thread slept and they were few and small (a wakeup saved).",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.writtenInline]]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_inline_read_packets_total",
    "Packets of tunnat_tun_queue_packets_total{direction=\"read\"} that the translator's thread read itself after a batch, because the queue's I/O thread slept (often an answer its own write produced).",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.readInline]]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_kicks_total",
    "Times the translator's thread woke a queue's sleeping I/O thread to write translated packets.",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.kicks]]),
  );
  labelledCounter(
    reg,
    "tunnat_tun_queue_notifies_total",
    "Times a queue's I/O thread woke the translator's thread to translate what it read (libuv merges wakes that arrive while one is pending).",
    ["queue"],
    per((r) => [[{ queue: q(r) }, r.notifies]]),
  );
}

function camel(dir: string): string {
  return dir
    .split("_")
    .map((w) => (w[0] ?? "").toUpperCase() + w.slice(1))
    .join("");
}
