/**
 * `tunnat run`: the daemon's life cycle (DESIGN.md §1, §5).
 *
 *   config -> preflight checks -> HTTP listener (/healthz 503) -> open TUN -> kernel plumbing
 *   -> translator + data loop -> extensions (metrics, control socket) -> /healthz 200, "forwarding"
 *
 * A failure at any step undoes the steps before it in reverse order (plumbing removed, TUN closed,
 * listener closed) and surfaces as a TunnatError with a stable code. stop() does the same for a
 * running daemon; SIGHUP re-reads the config file and applies the log level and timeouts.
 */
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import type { Logger } from "pino";
import { DataLoop } from "../datapath/loop.js";
import type { Device } from "../io/device.js";
import { devTunHint } from "../io/errno.js";
import type { NatConfig } from "../nat/config.js";
import { NatStats } from "../nat/stats.js";
import { Translator } from "../nat/translate.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import { hasCapNetAdmin } from "./checks.js";
import { BatchClock } from "./clock.js";
import type { TunnatConfig } from "./config.js";
import { ErrorCode, errorMessage, TunnatError } from "./errors.js";
import { type HttpServer, startHttpServer } from "./http.js";
import { type MappingLog, openMappingLog } from "./mapping-log.js";
import { datapathReadiness } from "./metrics.js";
import { hostRunner, Plumbing, type PlumbingSpec, type Runner } from "./plumbing.js";

/** The options src/io/tun.ts openTun() takes. */
export interface OpenTunOptions {
  name: string;
  vnetHdr: boolean;
  offloads: boolean;
  multiQueue?: boolean;
  slots?: number;
}

export interface DaemonDeps {
  openTun(opts: OpenTunOptions): Device | Promise<Device>;
  runner: Runner;
  /** Verify CAP_NET_ADMIN and /dev/net/tun before touching anything (off in unit tests). */
  preflight: boolean;
}

async function defaultOpenTun(opts: OpenTunOptions): Promise<Device> {
  const tun = await import("../io/tun.js");
  return tun.openTun(opts);
}

export function defaultDeps(): DaemonDeps {
  return { openTun: defaultOpenTun, runner: hostRunner(), preflight: true };
}

/**
 * Something started after the data path and stopped before it: the metrics collector, the control
 * socket, the mapping log. Returns its disposer.
 */
export type DaemonExtension = (
  d: Daemon,
) => void | (() => void | Promise<void>) | Promise<void | (() => void | Promise<void>)>;

const extensions: DaemonExtension[] = [];

/** Register an extension for every daemon started afterwards in this process. */
export function registerExtension(ext: DaemonExtension): void {
  extensions.push(ext);
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
  };
}

export class Daemon {
  readonly stats = new NatStats();
  readonly clock = new BatchClock();
  translator: Translator | undefined;
  loop: DataLoop | undefined;
  /** Called when the data path fails for good (the TUN went away); the CLI stops the daemon. */
  onFatal: ((err: Error) => void) | undefined;
  device: Device | undefined;
  http: HttpServer | undefined;
  plumbing: Plumbing | undefined;
  /** The RFC 6888 §4 mapping log, when configured; fed by the flow table's hooks. */
  mappingLog: MappingLog | undefined;
  /** /readyz: null while forwarding, else why not (control/metrics.ts datapathReadiness). */
  readiness: (() => string | null) | undefined;
  private readonly disposers: (() => void | Promise<void>)[] = [];
  private stopped: Promise<void> | null = null;

  private constructor(
    public config: TunnatConfig,
    readonly log: Logger,
    private readonly deps: DaemonDeps,
  ) {}

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
    if (this.deps.preflight) preflight();
    // Listen first: a taken port fails before the kernel is touched, and /healthz answers 503
    // while the rest comes up.
    this.http = await startHttpServer(c.metrics);
    // The core is pure: build it before the TUN so a bad table size fails early. The mapping log's
    // hooks must be there at construction (the table sizes its removal bookkeeping by them).
    this.mappingLog = openMappingLog(c, this.log);
    this.translator = new Translator(cfg.nat, this.clock, this.stats, this.mappingLog?.hooks);
    this.device = await this.deps.openTun({
      name: c.tun,
      vnetHdr: cfg.nat.vnetHdr,
      offloads: c.offloads,
    });
    if (c.manageRoutes) {
      this.plumbing = new Plumbing(plumbingSpec(cfg), { runner: this.deps.runner, log: this.log });
      await this.plumbing.apply();
    } else {
      const fwd = await this.deps.runner.readSysctl("net/ipv4/ip_forward").catch(() => "?");
      if (fwd !== "1")
        this.log.warn(
          { ipForward: fwd },
          "net.ipv4.ip_forward is not 1: nothing will be forwarded",
        );
    }
    this.loop = new DataLoop(this.device, this.translator, this.clock);
    this.loop.start((err) => {
      if (this.onFatal) this.onFatal(err);
      else throw err;
    });
    this.readiness = datapathReadiness(this);
    this.http.setReadinessCheck(this.readiness);
    for (const ext of extensions) {
      const dispose = await ext(this);
      if (typeof dispose === "function") this.disposers.push(dispose);
    }
    this.http.setReady(true);
    this.log.info(
      {
        tun: this.device.name,
        inside: cfg.nat.inside.map(formatCidr),
        natAddresses: cfg.nat.natAddresses.map(formatIpv4),
        metrics: `${this.http.address.host}:${this.http.address.port}`,
        manageRoutes: c.manageRoutes,
        vnetHdr: cfg.nat.vnetHdr,
        maxFlows: cfg.nat.maxFlows,
        mapping: cfg.nat.mapping,
        filtering: cfg.nat.filtering,
        preset: c.preset,
      },
      "forwarding",
    );
  }

  /** Stop the loop, remove the plumbing, close the TUN and the listener. Idempotent. */
  stop(): Promise<void> {
    this.stopped ??= this.teardown();
    return this.stopped;
  }

  private async teardown(): Promise<void> {
    this.http?.setReady(false);
    for (const dispose of this.disposers.splice(0).reverse()) {
      try {
        await dispose();
      } catch (e) {
        this.log.warn({ err: errorMessage(e) }, "extension stop failed");
      }
    }
    this.loop?.stop();
    if (this.plumbing) {
      const warnings = await this.plumbing.remove();
      if (warnings.length) this.log.warn({ warnings }, "plumbing removal reported problems");
    }
    try {
      this.device?.close();
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, "closing the TUN failed");
    }
    // With the TUN closed no packet can make a mapping: log the removal of the live ones.
    await this.mappingLog
      ?.close(this.translator?.table, Math.floor(this.clock.refresh() / 1000))
      .catch((e: unknown) =>
        this.log.warn({ err: errorMessage(e) }, "closing the mapping log failed"),
      );
    await this.http?.close();
  }

  /** SIGHUP: apply the parts of a new config that can change live (log level, timeouts). */
  reload(next: TunnatConfig): void {
    this.log.level = next.control.logLevel;
    const t = this.config.nat.timeouts;
    Object.assign(t, next.nat.timeouts);
    this.translator?.table.setTimeouts(t);
    const ignored: string[] = [];
    const a = JSON.stringify({ ...this.config.nat, timeouts: null });
    const b = JSON.stringify({ ...next.nat, timeouts: null });
    if (a !== b) ignored.push("translation settings other than timeouts");
    if (
      JSON.stringify({ ...this.config.control, logLevel: null }) !==
      JSON.stringify({ ...next.control, logLevel: null })
    )
      ignored.push("control settings other than logLevel");
    this.log.info(
      { logLevel: next.control.logLevel, timeouts: t, needRestart: ignored },
      "reloaded configuration",
    );
  }
}

/** The cheap prerequisites that make every later step fail obscurely when missing. */
export function preflight(): void {
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
