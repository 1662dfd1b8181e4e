/**
 * `tunnat run`: the daemon's life cycle, and the composition root. This is the one place that
 * builds the parts and wires them, each handed only what it needs (docs/architecture.md §Layers):
 *
 *   config -> preflight checks -> refusals (control socket answered, plumbing.check()) -> HTTP
 *   listener (/healthz 503) -> mapping log -> translator (flow table, batch clock, stats) -> TUN
 *   device -> kernel plumbing and guard -> data loop (batch clock, duration timer) -> kernel
 *   monitor and readiness (readiness.ts) -> HA pair (src/ha, with --ha: sync, role, takeovers)
 *   -> metrics (over an Observed view, served by the HTTP listener) -> control socket ->
 *   /healthz 200, "forwarding"
 *
 * Construction happens here, in start order, because the order is the contract: every refusal is
 * checked before anything is changed, so a refused start touches nothing of another daemon, and a
 * failure at any later step undoes the steps before it in reverse order (control socket and
 * metrics stopped, plumbing removed and the guard put back as it was, TUN closed, listener closed)
 * and surfaces as a TunnatError with a stable code. The CLI (cli/run.ts) adds only what belongs
 * to the process: the logger, signals and systemd. stop() removes the plumbing of a running
 * daemon but keeps the guard (fail closed until `tunnat down`); SIGHUP re-reads the config file
 * and applies the log level and timeouts.
 *
 * A handover restart's successor (handover.ts) runs the same steps up to the TUN, which it
 * adopts from the old daemon's fd, without touching the kernel or listening; then it waits for
 * the old daemon's "go", restores the table, starts reading, and only then listens and takes
 * over the plumbing's journal and the guard. handOver() is the old daemon's side. Each step is
 * marked on the start's Timeline (timeline.ts), logged with "forwarding".
 */
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";
import { FlowTable } from "../conntrack/table.js";
import { DataLoop } from "../datapath/loop.js";
import type { HaRuntime } from "../ha/ha.js";
import type { Device } from "../io/device.js";
import { devTunHint } from "../io/errno.js";
import { queueStats } from "../io/queues.js";
import type { NatConfig } from "../nat/config.js";
import { EgressPolicy } from "../nat/egress.js";
import { NatStats } from "../nat/stats.js";
import { Translator } from "../nat/translate.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import { hasCapNetAdmin } from "./checks.js";
import { BatchClock } from "./clock.js";
import { reloadChanges, type TunnatConfig } from "./config.js";
import { type ControlServer, startControlSocket } from "./control-socket.js";
import { startEgressLog } from "./egress-log.js";
import { FlowEvents } from "./flow-events.js";
import { type HandoverOutcome, handOver, keyDifferences, type Successor } from "./handover.js";
import { type HttpServer, startHttpServer } from "./http.js";
import { type MappingLog, openMappingLog } from "./mapping-log.js";
import type { TunnatMetrics } from "./metrics.js";
import type { Observed, ReloadCounts, ReloadResult } from "./observed.js";
import { socketAnswers } from "./owner.js";
import { Plumbing, type PlumbingSpec } from "./plumbing.js";
import { KernelMonitor, readinessCheck } from "./readiness.js";
import { hostRunner, type Runner } from "./runner.js";
import { shownAddress } from "./shared-address.js";
import { statsSnapshot } from "./stats-snapshot.js";
import { gatewayInfo, topTalkers } from "./status-snapshot.js";
import { TableKeeper } from "./table-keeper.js";
import { monotonicMs, processStartMs, Timeline } from "./timeline.js";
import { readTunCounters } from "./tun-stats.js";

/** The options src/io/tun.ts openTun() takes. */
interface OpenTunOptions {
  name: string;
  vnetHdr: boolean;
  offloads: boolean;
  multiQueue?: boolean;
  slots?: number;
  /** 2 or more: one native I/O thread per queue (src/io/queues.ts). */
  queues?: number;
  pollUs?: number;
  /** Adopt this TUN queue fd (a handover restart) instead of opening the device. */
  fd?: number;
  /** The same with --queues above 1: one fd per queue. */
  fds?: number[];
}

export interface DaemonDeps {
  openTun(opts: OpenTunOptions): Device | Promise<Device>;
  runner: Runner;
  /** Verify CAP_NET_ADMIN and /dev/net/tun before touching anything (off in unit tests). */
  preflight: boolean;
  /**
   * Monotonic high-resolution milliseconds for durations (the batch-duration metric). Not the
   * batch clock, which stands still for a whole batch. Default performance.now().
   */
  timer?: () => number;
  /**
   * Wall-clock milliseconds since the epoch, for times shown to people and Prometheus (a
   * reload's time). Not the monotonic clock, whose zero is arbitrary. Default Date.now().
   */
  wallClock?: () => number;
  /** Where the start spends its time (timeline.ts); the CLI's, which marked its own steps. */
  timeline?: Timeline;
  /** This start is a handover restart's successor (handover.ts). */
  successor?: Successor;
}

async function defaultOpenTun(opts: OpenTunOptions): Promise<Device> {
  if ((opts.queues ?? 1) > 1) {
    const q = await import("../io/queues.js");
    return q.openQueuedTun({ ...opts, queues: opts.queues!, pollUs: opts.pollUs ?? 0 });
  }
  const tun = await import("../io/tun.js");
  return tun.openTun(opts);
}

export function defaultDeps(): DaemonDeps {
  return { openTun: defaultOpenTun, runner: hostRunner(), preflight: true };
}

/**
 * How long a handover waits for a multi-queue TUN's threads to end their reads, and again for
 * their writes (Device.quiesce): each is microseconds; the bound is for a thread stuck in one.
 */
const QUIESCE_MS = 200;

/** The guard's state file (guard.ts), beside the plumbing's: `plumbing.json` -> `guard.json`. */
function guardStateFile(plumbingStateFile: string): string {
  if (plumbingStateFile.endsWith("plumbing.json"))
    return `${plumbingStateFile.slice(0, -"plumbing.json".length)}guard.json`;
  return `${plumbingStateFile.replace(/\.json$/, "")}.guard.json`;
}

export function plumbingSpec(cfg: TunnatConfig): PlumbingSpec {
  const c = cfg.control;
  if (c.insideInterface === undefined || c.outsideInterface === undefined)
    throw new TunnatError(
      ErrorCode.Config,
      "route management needs --inside-interface and --outside-interface",
    );
  return {
    tun: c.tun,
    tunAddress: c.tunAddress,
    insideInterface: c.insideInterface,
    outsideInterface: c.outsideInterface,
    inside: cfg.nat.inside,
    natAddresses: cfg.nat.natAddresses,
    table: c.routeTable,
    priority: c.rulePriority,
    setIpForward: c.setIpForward,
    stateFile: c.stateFile,
    guardStateFile: guardStateFile(c.stateFile),
    controlSocket: c.controlSocket,
    internalAddress: c.internalAddress,
    ports: c.portsGiven,
    portsWhere: c.portsWhere,
    forwards: cfg.nat.forwards.map((f) => ({ proto: f.proto, port: f.port })),
  };
}

/**
 * What the kernel state and the TUN were made from: a handover restart's successor adopts them
 * only when its own settings give the same (handover.ts).
 */
export function handoverKey(cfg: TunnatConfig): Record<string, unknown> {
  const c = cfg.control;
  return {
    manageRoutes: c.manageRoutes,
    plumbing: c.manageRoutes ? plumbingSpec(cfg) : null,
    tun: c.tun,
    vnetHdr: cfg.nat.vnetHdr,
    offloads: c.offloads,
    queues: c.queues,
    tunQueueLength: c.tunQueueLength ?? null,
    tableStateFile: c.tableStateFile,
    ha: c.ha ?? null,
  };
}

export type { ReloadResult } from "./observed.js";

export class Daemon {
  stats = new NatStats();
  readonly clock = new BatchClock();
  translator: Translator | undefined;
  loop: DataLoop | undefined;
  /** Called when the data path fails for good (the TUN went away); the CLI stops the daemon. */
  onFatal: ((err: Error) => void) | undefined;
  /**
   * How the process runs a handover restart (cli/run.ts: handOver() plus what belongs to the
   * process, systemd's MAINPID and the exit); `tunnat restart` and SIGUSR2 come here.
   */
  onRestart: ((spawned: (pid: number) => void) => Promise<HandoverOutcome>) | undefined;
  device: Device | undefined;
  http: HttpServer | undefined;
  plumbing: Plumbing | undefined;
  /** The RFC 6888 §4 mapping log, when configured; fed by the flow table's hooks. */
  mappingLog: MappingLog | undefined;
  /** /readyz: null while forwarding, else why not (control/readiness.ts). */
  readiness: (() => string | null) | undefined;
  /** The kernel state forwarding needs, polled off the data path (readiness.ts). */
  kernel: KernelMonitor | undefined;
  /** The table state file: restored at start, checkpointed, saved at stop (table-keeper.ts). */
  tableKeeper: TableKeeper | undefined;
  /** The metric registry /metrics serves (metrics.ts). */
  metrics: TunnatMetrics | undefined;
  /** The control socket of `tunnat flows` and `tunnat stats`. */
  control: ControlServer | undefined;
  /** Stops the egress policy's rate-limited refusal log (egress-log.ts). */
  private stopEgressLog: (() => void) | undefined;
  /** An outside address as operators see it (the shared one in shared-address mode). */
  private shown: (addr: number) => number = shownAddress(null);
  /** The HA pair's runtime (src/ha) when started with --ha. */
  ha: HaRuntime | undefined;
  /** bringUp() finished: stop() keeps the guard; before that a failure puts back the old one. */
  private started = false;
  /** What the last SIGHUP did, if there was one. */
  lastReload: ReloadResult | undefined;
  /** Reload outcomes since start, for the metrics. */
  readonly reloads: ReloadCounts = {
    succeeded: 0,
    failed: 0,
    lastFailed: false,
    lastSuccessAt: 0,
  };
  private stopped: Promise<void> | null = null;
  /** A handover restart under way or done (handover.ts). */
  private handingOver: Promise<HandoverOutcome> | undefined;
  /** Marks of the start and of the stop (monotonic ms; docs/operations.md §Restart). */
  readonly timeline: Timeline;
  readonly stopTimeline = new Timeline(0);

  private constructor(
    public config: TunnatConfig,
    readonly log: Logger,
    private readonly deps: DaemonDeps,
  ) {
    this.wall = deps.wallClock ?? Date.now;
    this.timeline = deps.timeline ?? new Timeline();
    // The configuration was loaded at start (tunnat_config_last_reload_timestamp_seconds).
    this.reloads.lastSuccessAt = this.wall() / 1000;
  }

  /** Wall-clock milliseconds (DaemonDeps.wallClock). */
  private readonly wall: () => number;

  get nat(): NatConfig {
    return this.config.nat;
  }

  /** Start everything; on failure undo what was done and throw. */
  static async start(cfg: TunnatConfig, log: Logger, deps: DaemonDeps = defaultDeps()) {
    const d = new Daemon(cfg, log, deps);
    try {
      await d.bringUp();
    } catch (e) {
      await d.teardown();
      if (e instanceof TunnatError) throw e;
      throw new TunnatError(ErrorCode.Datapath, `start failed: ${errorMessage(e)}`, { cause: e });
    }
    return d;
  }

  private async bringUp(): Promise<void> {
    const cfg = this.config;
    const c = cfg.control;
    const tl = this.timeline;
    // A handover restart's successor: the old daemon still runs and owns everything; this start
    // touches nothing of the kernel until its "go" (handover.ts).
    const succ = this.deps.successor;
    if (this.deps.preflight) preflight();
    // What the core is built with: the config's, except in shared-address mode (below).
    let core = cfg.nat;
    // A bad HA file or key is a refused start: read it before anything is touched. Loaded only
    // for a pair: a single gateway's start does not pay for the modules.
    const ha = c.ha !== undefined ? await import("../ha/ha.js") : undefined;
    const haSettings =
      c.ha !== undefined ? (await import("../ha/config.js")).loadHaSettings(c.ha) : undefined;
    if (succ) {
      const differ = keyDifferences(succ.offer.key, handoverKey(cfg));
      if (differ.length > 0)
        throw new TunnatError(
          ErrorCode.Config,
          `a handover restart keeps the TUN and the kernel plumbing, so these settings must not change: ${differ.join(", ")}; use a full restart (systemctl restart tunnat) to change them`,
        );
    }
    // Refusals first: nothing may be touched before we know no other daemon owns what we need.
    if (!succ && (await socketAnswers(c.controlSocket)))
      throw new TunnatError(
        ErrorCode.Control,
        `another daemon answers on ${c.controlSocket}; stop it or choose another --control-socket`,
      );
    if (c.manageRoutes) {
      this.plumbing = new Plumbing(plumbingSpec(cfg), {
        runner: this.deps.runner,
        log: this.log,
        predecessor: succ?.offer.pid,
      });
      await this.plumbing.check();
      const sh = this.plumbing.shared;
      this.shown = shownAddress(sh);
      if (sh) {
        // Shared-address mode: the core translates to the internal address within the reserved
        // range; the kernel maps that to the shared address (shared-address.ts). The config keeps
        // the address as given (a reload compares against it).
        core = {
          ...cfg.nat,
          natAddresses: [sh.internal],
          portLo: sh.portLo,
          portHi: sh.portHi,
          forwards: cfg.nat.forwards.map((f) => ({ ...f, natAddress: null })),
        };
        this.log.info(
          {
            sharedAddress: formatIpv4(sh.shared),
            internalAddress: formatIpv4(sh.internal),
            ports: `${sh.portLo}-${sh.portHi}`,
          },
          "shared-address mode: the NAT address is the outside interface's own",
        );
      }
    }
    tl.mark("checked");
    // Then listen: a taken port fails before the kernel is touched, and /healthz answers 503
    // while the rest comes up. A successor listens once the old daemon let go of the port.
    if (!succ) this.http = await startHttpServer(c.metrics);
    // The core is pure: build it before the TUN so a bad table size fails early. The mapping log's
    // hooks must be there at construction (the table sizes its removal bookkeeping by them).
    this.mappingLog = openMappingLog(c, this.log, this.shown);
    // A pair's flow events go to a preallocated ring (src/ha/events.ts), read by the sync; flow
    // events for `tunnat flows --follow` to another fixed ring (flow-events.ts). Same hook.
    const ring = haSettings && ha ? ha.createRing(haSettings) : undefined;
    const clk = this.clock;
    const events = new FlowEvents(core.maxFlows, undefined, () => Math.floor(clk.now() / 1000));
    const hooks = {
      ...this.mappingLog?.hooks,
      flowEvent: ring
        ? (k: number, f: number) => {
            ring.flowEvent(k, f);
            events.flowEvent(k, f);
          }
        : events.hooks.flowEvent,
    };
    const table = new FlowTable(core, this.stats, hooks);
    events.attach(table);
    this.translator = new Translator(core, table, this.clock, this.stats);
    if (c.tableStateFile !== null)
      this.tableKeeper = new TableKeeper({
        file: c.tableStateFile,
        interval: c.checkpointInterval,
        nat: core,
        log: this.log,
        now: () => Math.floor(this.clock.refresh() / 1000),
      });
    // A successor loads the table once the old daemon saved it (after "go").
    if (!succ) this.restoreTable(core, events);
    this.device = await this.deps.openTun({
      name: succ ? succ.offer.tun : c.tun,
      vnetHdr: cfg.nat.vnetHdr,
      offloads: c.offloads,
      queues: c.queues,
      pollUs: c.pollUs,
      ...(succ ? (c.queues > 1 ? { fds: succ.offer.fds } : { fd: succ.offer.fds[0] }) : {}),
    });
    tl.mark("tun");
    // The adopted TUN keeps the queue length it was given (the settings are the same).
    if (c.tunQueueLength !== undefined && !succ)
      await this.setTunQueueLength(this.device.name, c.tunQueueLength);
    // prom-client is not needed to forward: a start loads it after the data path runs; a
    // successor loads it now, while the old daemon still forwards (loading blocks the loop).
    const metricsModule = succ ? await import("./metrics.js") : undefined;
    if (succ) {
      // Everything that could refuse has been checked: ask for the gateway. From here on the
      // old daemon does not read the TUN (packets wait in its queue) and a failure is ours.
      const go = await succ.ready();
      tl.mark("go");
      tl.mark("predecessorStoppedReading", go.stoppedReading);
      if (!go.saved) this.log.warn("the previous daemon could not save its table");
      this.restoreTable(core, events);
    }
    tl.mark("restored");
    if (this.plumbing && succ) {
      // The routes, rules and proxy ARP stay as they are: taken over after reading starts.
    } else if (this.plumbing) {
      await this.plumbing.apply({ checked: true });
    } else {
      const fwd = await this.deps.runner.readSysctl("net/ipv4/ip_forward").catch(() => "?");
      if (fwd !== "1")
        this.log.warn(
          { ipForward: fwd },
          "net.ipv4.ip_forward is not 1: nothing will be forwarded",
        );
    }
    this.loop = new DataLoop(this.device, this.translator, this.clock, {
      timer: this.deps.timer ?? (() => performance.now()),
    });
    // A gateway of a pair starts as the standby: it forwards once it is made active.
    this.loop.forwarding = haSettings === undefined;
    tl.mark("plumbing");
    this.loop.start((err) => {
      if (this.onFatal) this.onFatal(err);
      else throw err;
    });
    tl.mark("reading");
    if (succ) {
      await this.plumbing?.adopt(succ.offer.journal);
      // Test hook (test/netns/restart.test.ts): a successor that fails once it owns everything.
      if (process.env.TUNNAT_TEST_HANDOVER_FAULT === "after-go")
        throw new TunnatError(ErrorCode.Datapath, "test fault after the handover's go");
      this.http = await startHttpServer(c.metrics);
    }
    const http = this.http as HttpServer;
    this.tableKeeper?.start(this.translator.table, this.stats);
    const loop = this.loop;
    this.kernel = new KernelMonitor(
      { tun: c.tun, plumbing: this.plumbing?.readinessSpec() ?? null },
      this.deps.runner,
      this.plumbing?.guard ?? null,
      () => loop.loopStats.packets,
    );
    await this.kernel.poll();
    this.kernel.start();
    if (haSettings && ring && ha) {
      const clock = this.clock;
      this.ha = await ha.startHa(haSettings, {
        table: this.translator.table,
        ring,
        nowSec: () => Math.floor(clock.refresh() / 1000),
        nowMs: () => clock.refresh(),
        setForwarding: (on) => {
          loop.forwarding = on;
        },
        runner: this.deps.runner,
        outsideInterface: c.outsideInterface,
        natAddresses: cfg.nat.natAddresses,
        log: this.log,
      });
    }
    this.readiness = readinessCheck(this, this.kernel);
    http.setReadinessCheck(this.readiness);
    const view = this.observed();
    const { createMetrics } = metricsModule ?? (await import("./metrics.js"));
    this.metrics = createMetrics(view, {
      topHosts: c.topHosts,
      legacyNames: c.metricsLegacyNames,
    });
    http.setMetrics(this.metrics.registry);
    const egress = view.egress;
    if (egress) this.stopEgressLog = startEgressLog(egress, this.log);
    const clock = this.clock;
    const startedMs = clock.now();
    this.control = await startControlSocket(
      c.controlSocket,
      {
        table: view.table,
        outsideAddress: this.shown,
        nowSec: () => Math.floor(clock.now() / 1000),
        stats: () => ({
          gateway: gatewayInfo(
            this.config,
            Math.floor((clock.now() - startedMs) / 1000),
            this.device?.name,
          ),
          ...statsSnapshot(view),
          topTalkers: topTalkers(view.table, 5),
        }),
        events,
        ...(this.ha ? { ha: (this.ha as HaRuntime).command.bind(this.ha) } : {}),
        restart: () => this.restartRequested(),
      },
      this.log,
      { group: c.controlSocketGroup },
    );
    http.setReady(true);
    this.started = true;
    tl.mark("ready");
    this.logFirstBatch();
    this.log.info(
      {
        tun: this.device.name,
        inside: cfg.nat.inside.map(formatCidr),
        natAddresses: cfg.nat.natAddresses.map(formatIpv4),
        metrics: `${http.address.host}:${http.address.port}`,
        manageRoutes: c.manageRoutes,
        vnetHdr: cfg.nat.vnetHdr,
        queues: c.queues,
        pollUs: c.queues > 1 ? c.pollUs : undefined,
        maxFlows: cfg.nat.maxFlows,
        mapping: cfg.nat.mapping,
        filtering: cfg.nat.filtering,
        preset: c.preset,
        handover: succ ? { from: succ.offer.pid } : undefined,
        // Milliseconds since exec, per step; processStart is the same moment on CLOCK_MONOTONIC.
        timeline: tl.relative(),
        processStart: Math.round(tl.zero * 10) / 10,
      },
      "forwarding",
    );
  }

  /**
   * Log when the first packet was read (the end of a restart's gap), once, off the data path:
   * polled every 50 ms for at most 30 s.
   */
  private logFirstBatch(): void {
    const loop = this.loop;
    if (!loop) return;
    let polls = 0;
    const t = setInterval(() => {
      const at = loop.firstBatchAt;
      if (at === 0 && ++polls < 600) return;
      clearInterval(t);
      if (at === 0) return;
      // The loop's timer is performance.now(): milliseconds since this process started.
      const mono = at + processStartMs();
      this.timeline.mark("firstBatch", mono);
      this.log.info(
        { timeline: { firstBatch: Math.round((mono - this.timeline.zero) * 10) / 10 }, at: mono },
        "first packet read",
      );
    }, 50);
    t.unref();
  }

  /** Load the table state file into the table (or start empty, saying why). */
  private restoreTable(core: NatConfig, events: FlowEvents): void {
    const keeper = this.tableKeeper;
    const tr = this.translator;
    if (!keeper || !tr) return;
    const table = tr.table;
    const r = keeper.restore(table, this.stats);
    // A restore cut short by a bug (never by a bad file) must not leave half a table.
    if (r.kind === "refused" && table.active !== 0) {
      this.stats = new NatStats();
      const fresh = new FlowTable(core, this.stats, {
        ...this.mappingLog?.hooks,
        ...events.hooks,
      });
      events.attach(fresh);
      this.translator = new Translator(core, fresh, this.clock, this.stats);
    }
    // Restored flows were not created here: their age counts from this start.
    events.adopt(this.translator?.table ?? table, Math.floor(this.clock.refresh() / 1000));
  }

  /**
   * A handover restart (handover.ts): start the successor and hand it the gateway. Resolves
   * with the outcome; "refused" leaves this daemon forwarding as before. One at a time.
   */
  handOver(spawned?: (pid: number) => void): Promise<HandoverOutcome> {
    if (this.handingOver) return this.handingOver;
    const why = this.handoverRefusal();
    if (why) return Promise.resolve({ kind: "refused", why });
    const dev = this.device as Device;
    this.log.info("handover restart: starting the successor");
    const h = handOver({
      fds: tunFds(dev),
      offer: {
        pid: process.pid,
        tun: dev.name,
        key: handoverKey(this.config),
        journal: this.plumbing?.journalEntries() ?? [],
      },
      spawned,
      release: () => this.release(),
    }).then((o) => {
      if (o.kind === "refused") {
        this.handingOver = undefined;
        this.log.warn({ why: o.why }, `handover restart refused, forwarding on: ${o.why}`);
      } else if (o.kind === "failed") this.log.error({ why: o.why }, "handover restart failed");
      else
        this.log.info(
          {
            successor: o.pid,
            gapMs: Math.round((o.done.reading - this.stopTimeline.marks.stoppedReading!) * 10) / 10,
            restoredFlows: o.done.restoredFlows,
            stop: this.stopTimeline.relative(this.stopTimeline.marks.release),
          },
          `handed over to pid ${o.pid}`,
        );
      return o;
    });
    this.handingOver = h;
    return h;
  }

  /** `tunnat restart` (the control socket): answers once the successor runs, or why not. */
  private restartRequested(): Promise<object> {
    return new Promise<object>((resolve, reject) => {
      const run = this.onRestart;
      const why = run ? this.handoverRefusal() : "this daemon was not started by tunnat run";
      if (why || !run) {
        reject(new TunnatError(ErrorCode.Control, `restart refused: ${why}`));
        return;
      }
      run((pid) => resolve({ pid: process.pid, successor: pid })).then(
        (o) => {
          if (o.kind === "refused")
            reject(new TunnatError(ErrorCode.Control, `restart refused: ${o.why}`));
        },
        (e: unknown) => reject(e),
      );
    });
  }

  /** Why this daemon cannot hand over now, or null. */
  private handoverRefusal(): string | null {
    const c = this.config.control;
    if (!this.started) return "the daemon has not finished starting";
    if (this.handingOver) return "a handover restart is already under way";
    if (this.stopped) return "the daemon is stopping";
    if (c.tableStateFile === null)
      return "a handover restart needs --table-state-file (the table goes through it)";
    if (this.ha) return "a gateway of an HA pair does not hand over (fail over to the peer)";
    if (!this.device || tunFds(this.device).length === 0) return "the TUN has no fd to hand over";
    return null;
  }

  /**
   * The old daemon's half of "go": close the listeners (the successor binds them), stop reading
   * the TUN (its queue holds what arrives), save the table. The plumbing stays.
   */
  private async release(): Promise<{ stoppedReading: number; saved: boolean }> {
    const st = this.stopTimeline;
    st.mark("release");
    this.http?.setReady(false);
    try {
      await this.control?.close();
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, "closing the control socket failed");
    }
    this.control = undefined;
    this.http?.setMetrics(undefined);
    this.metrics?.stop();
    this.metrics = undefined;
    await this.http?.close();
    this.http = undefined;
    this.stopEgressLog?.();
    this.stopEgressLog = undefined;
    this.kernel?.stop();
    await this.tableKeeper?.stop();
    const stoppedReading = st.mark("stoppedReading");
    // A multi-queue TUN's I/O threads hold packets they read and packets to write: finish both
    // here, so the handover loses none of them (what arrives now waits for the successor).
    if (this.device?.quiesce) {
      if (!this.device.quiesce(QUIESCE_MS))
        this.log.warn(
          { timeoutMs: QUIESCE_MS },
          "the TUN queues' threads did not finish their packets in time; some may be lost",
        );
      st.mark("quiesced");
    }
    this.loop?.stop();
    this.device?.close();
    const saved =
      this.tableKeeper && this.translator
        ? this.tableKeeper.save(this.translator.table, this.stats)
        : false;
    st.mark("saved");
    return { stoppedReading, saved };
  }

  /** After a handover: flush the mapping log (its live mappings go on in the successor). */
  async finishHandover(): Promise<void> {
    await this.mappingLog
      ?.close(undefined, Math.floor(this.clock.refresh() / 1000))
      .catch((e: unknown) =>
        this.log.warn({ err: errorMessage(e) }, "closing the mapping log failed"),
      );
  }

  /**
   * --tun-queue-length: the TUN's txqueuelen, before any packet flows (the kernel's queue for
   * the daemon; what overflows it is counted in tunnat_tun_dropped_packets_total{to_daemon}).
   */
  private async setTunQueueLength(tun: string, n: number): Promise<void> {
    try {
      await this.deps.runner.ip(["link", "set", "dev", tun, "txqueuelen", String(n)]);
    } catch (e) {
      throw new TunnatError(
        ErrorCode.Datapath,
        `cannot set the queue length of TUN ${tun} to ${n} (--tun-queue-length): ${errorMessage(e)}`,
        { cause: e },
      );
    }
  }

  /**
   * Stop the loop, remove the plumbing, close the TUN and the listener. Idempotent. During a
   * handover it waits for its outcome; after one that succeeded there is nothing of ours left to
   * undo (the successor owns it).
   */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      const h = this.handingOver;
      if (h && (await h).kind === "done") return;
      await this.teardown();
    })();
    return this.stopped;
  }

  private async teardown(): Promise<void> {
    const st = this.stopTimeline;
    st.mark("stop");
    this.http?.setReady(false);
    try {
      await this.control?.close();
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, "closing the control socket failed");
    }
    this.http?.setMetrics(undefined);
    this.metrics?.stop();
    this.stopEgressLog?.();
    try {
      await this.ha?.stop();
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, "stopping the HA sync failed");
    }
    this.kernel?.stop();
    this.loop?.stop();
    st.mark("stoppedReading");
    // Saved first, while nothing else has been undone: the restart's gap starts here. Only a
    // daemon that was running saves (a failed start must not replace a good state file).
    let saved = false;
    if (this.tableKeeper && this.translator) {
      await this.tableKeeper.stop();
      if (this.started) saved = this.tableKeeper.save(this.translator.table, this.stats);
      st.mark("saved");
    }
    if (this.plumbing) {
      // A running daemon leaves the guard in place; a start that failed restores the one before.
      const warnings = this.started ? await this.plumbing.remove() : await this.plumbing.abort();
      if (warnings.length) this.log.warn({ warnings }, "plumbing removal reported problems");
      st.mark("plumbingRemoved");
    }
    try {
      this.device?.close();
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, "closing the TUN failed");
    }
    st.mark("tunClosed");
    // With the TUN closed no packet can make a mapping: log the removal of the live ones, unless
    // they were saved for the next start (they go on; their removal is logged when it happens).
    await this.mappingLog
      ?.close(saved ? undefined : this.translator?.table, Math.floor(this.clock.refresh() / 1000))
      .catch((e: unknown) =>
        this.log.warn({ err: errorMessage(e) }, "closing the mapping log failed"),
      );
    await this.http?.close();
    if (this.started)
      this.log.info(
        {
          // Milliseconds since the stop began; stoppedReading is also given on CLOCK_MONOTONIC.
          timeline: {
            ...st.relative(st.marks.stop),
            closed: Math.round((monotonicMs() - (st.marks.stop ?? 0)) * 10) / 10,
          },
          stoppedReading: st.marks.stoppedReading,
        },
        "stop timeline",
      );
  }

  /**
   * What the metrics, `tunnat stats` and the control socket read (observed.ts): the counters,
   * the table, the readiness check, the guard's and the TUN's counters. Needs a started data path.
   */
  observed(): Observed {
    const tr = this.translator;
    const loop = this.loop;
    if (!tr || !loop) throw new Error("the observed view needs a started data path");
    const kernel = this.kernel;
    const tunName = this.device?.name;
    // Getters, so a reader always sees the daemon's current parts.
    const d = this;
    return {
      stats: this.stats,
      table: tr.table,
      loopStats: loop.loopStats,
      readiness: () => (d.readiness ? d.readiness() : "data path not running"),
      guardDrops: kernel && this.plumbing ? () => kernel.counters() : undefined,
      lastGuardDrops: () => kernel?.guardCounters ?? null,
      tunName,
      tunCounters: () => (tunName === undefined ? null : readTunCounters(tunName)),
      tunQueues: () => queueStats(d.device),
      egress: () => tr.egress,
      forwards: tr.forwards,
      outsideAddress: this.shown,
      get mappingLog() {
        return d.mappingLog;
      },
      lastReload: () => d.lastReload,
      reloads: () => d.reloads,
      config: {
        mode: this.config.control.manageRoutes ? "managed" : "unmanaged",
        mapping: this.config.nat.mapping,
        filtering: this.config.nat.filtering,
        preset: this.config.control.preset,
      },
      ha: d.ha ? () => (d.ha as HaRuntime).snapshot() : undefined,
      tableState: this.tableKeeper?.stats,
    };
  }

  /** A SIGHUP whose configuration could not be read or applied: the old settings stay. */
  reloadFailed(): void {
    this.reloads.failed++;
    this.reloads.lastFailed = true;
  }

  /**
   * SIGHUP: apply the parts of a new config that can change live (log level, timeouts) and name,
   * with old and new values, every changed setting that keeps its old value until a restart. The
   * result is logged and kept in `lastReload` (shown by `tunnat stats`).
   */
  reload(next: TunnatConfig): ReloadResult {
    const { applied, needRestart } = reloadChanges(this.config, next);
    this.log.level = next.control.logLevel;
    this.config.control.logLevel = next.control.logLevel;
    const t = this.config.nat.timeouts;
    Object.assign(t, next.nat.timeouts);
    this.translator?.table.setTimeouts(t);
    // Egress rules: a new policy; live flows it denies are ended, the others go on.
    let egressEnded = 0;
    if (applied.some((c) => c.field === "egress")) {
      this.config.nat.egress = next.nat.egress;
      egressEnded = this.translator?.setEgress(new EgressPolicy(next.nat.egress)) ?? 0;
    }
    const result: ReloadResult = {
      at: new Date(this.wall()).toISOString(),
      applied,
      needRestart,
    };
    this.lastReload = result;
    this.reloads.succeeded++;
    this.reloads.lastFailed = false;
    this.reloads.lastSuccessAt = Date.parse(result.at) / 1000;
    this.log.info(
      { logLevel: next.control.logLevel, timeouts: t, applied, needRestart, egressEnded },
      needRestart.length === 0
        ? "reloaded configuration"
        : `reloaded configuration; needs a restart to take effect: ${needRestart
            .map((c) => `${c.field} ${JSON.stringify(c.old)} -> ${JSON.stringify(c.new)}`)
            .join(", ")}`,
    );
    return result;
  }
}

/** The open fds of the TUN's queues (one without --queues), for a handover restart. */
function tunFds(d: Device): number[] {
  const x = d as { fd?: unknown; queues?: readonly { fd?: unknown }[] };
  const fds = x.queues ? x.queues.map((q) => q.fd) : [x.fd];
  return fds.every((f) => typeof f === "number" && f >= 0) ? (fds as number[]) : [];
}

/** The cheap prerequisites that make every later step fail obscurely when missing. */
function preflight(): void {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync("/dev/net/tun");
    if (!st.isCharacterDevice()) throw new Error("not a character device");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TunnatError(
      ErrorCode.NoTun,
      `/dev/net/tun is not usable (${code ?? errorMessage(e)}): ${devTunHint(code ?? "ENOENT", "open")}`,
    );
  }
  try {
    accessSync("/dev/net/tun", fsConstants.R_OK | fsConstants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "EACCES";
    const mode = (st.mode & 0o7777).toString(8).padStart(4, "0");
    throw new TunnatError(
      ErrorCode.NoTun,
      `/dev/net/tun (mode ${mode}, uid ${st.uid}, gid ${st.gid}) cannot be opened by uid ${process.getuid?.()} gid ${process.getgid?.()} (${code}): ${devTunHint(code, "open")}`,
    );
  }
  if (!hasCapNetAdmin())
    throw new TunnatError(
      ErrorCode.Prereq,
      "CAP_NET_ADMIN is missing: run tunnat as root or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN, docker --cap-add NET_ADMIN)",
    );
}
