/**
 * `tunnat run`: load the settings, start the daemon (control/daemon.ts, which builds and wires
 * the gateway), and add what belongs to the process: the logger, the signal handlers (SIGTERM,
 * SIGINT stop; SIGHUP reloads; SIGUSR2 and `tunnat restart` hand over to a new process),
 * systemd notification and its watchdog. Started by a handover (TUNNAT_HANDOVER in the
 * environment, control/handover.ts) it is the old daemon's successor.
 */
import { errorMessage, isTunnatError } from "../base/errors.js";
import { loadConfig, type TunnatConfig } from "../control/config.js";
import { Timeline } from "../control/timeline.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import { type Command, fail, inputFrom, settingsOptions } from "./command.js";

export const run: Command = {
  command: "run",
  describe: "run the NAT daemon",
  builder: settingsOptions,
  run: runCommand,
};

async function runCommand(argv: Record<string, unknown>): Promise<number> {
  // Where the start spends its time (docs/operations.md §Restart): from exec to here is Node
  // and the CLI's modules and argument parsing.
  const timeline = new Timeline();
  timeline.mark("cli");
  const input = inputFrom(argv);
  let cfg: TunnatConfig;
  try {
    cfg = loadConfig(input);
  } catch (e) {
    return fail(e);
  }
  timeline.mark("config");
  const { createLogger } = await import("../control/log.js");
  const { Daemon, defaultDeps } = await import("../control/daemon.js");
  const { installSignalHandlers } = await import("../control/shutdown.js");
  const { SystemdNotifier } = await import("../control/systemd.js");
  const { Successor, takeOffer } = await import("../control/handover.js");
  timeline.mark("modules");
  const log = createLogger({ level: cfg.control.logLevel });
  let successor: InstanceType<typeof Successor> | undefined;
  try {
    const offer = takeOffer();
    successor = offer ? new Successor(offer) : undefined;
  } catch (e) {
    return fail(e);
  }
  const notifier = new SystemdNotifier({ log });
  // A successor is not the service's main process until the old one says so.
  if (!successor) notifier.status("starting");
  let daemon: Awaited<ReturnType<typeof Daemon.start>>;
  try {
    daemon = await Daemon.start(cfg, log, { ...defaultDeps(), timeline, successor });
  } catch (e) {
    log.error(
      { code: isTunnatError(e) ? e.code : undefined, err: errorMessage(e) },
      successor ? "handover start failed" : "start failed",
    );
    if (successor) await successor.refuse(errorMessage(e));
    else notifier.status(`start failed: ${errorMessage(e)}`);
    return fail(e);
  }
  const shutdown = installSignalHandlers({
    log,
    // The table is saved at stop: ~0.4 ms per 1000 flows measured (test/bench/state.ts), so the
    // budget grows by 1 ms per 1000 flows of capacity.
    budgetMs: 2000 + Math.ceil(cfg.nat.maxFlows / 1000),
    stop: () => {
      notifier.stopping();
      return daemon.stop();
    },
    handover: () => daemon.onRestart?.(() => undefined),
    reload: () => {
      notifier.reloading();
      try {
        daemon.reload(loadConfig(input));
        notifier.ready(forwardingStatus(daemon.config, daemon.device?.name));
      } catch (e) {
        // The old settings stay: say so, and leave the reloading state either way.
        daemon.reloadFailed();
        notifier.ready(
          `${forwardingStatus(daemon.config, daemon.device?.name)}; reload failed: ${errorMessage(e)}`,
        );
        throw e;
      }
    },
  });
  // A handover restart (SIGUSR2, `tunnat restart`): once the successor forwards, this process
  // names it the main one and exits 0 without undoing anything; one that failed after the
  // gateway was released ends like a failed data path.
  daemon.onRestart = async (spawned) => {
    const o = await daemon.handOver(spawned);
    if (o.kind === "done") {
      shutdown.uninstall();
      notifier.mainPid(o.pid);
      await daemon.finishHandover();
      await o.confirm();
      log.info({ code: 0, successor: o.pid }, "stopped");
      process.exit(0);
    } else if (o.kind === "failed") void shutdown.trigger("handover restart failed", 1);
    return o;
  };
  // A TUN that disappears, or a bug, still ends with the plumbing removed, and exits 1.
  daemon.onFatal = (err) => {
    log.error(
      { err: errorMessage(err), code: (err as { code?: string }).code },
      "data path failed",
    );
    void shutdown.trigger("data path failed", 1);
  };
  process.on("uncaughtException", (err) => {
    log.fatal({ err: errorMessage(err) }, "uncaught exception");
    void shutdown.trigger("uncaught exception", 1);
  });
  if (successor) {
    // Forwarding: the old daemon makes this process the main one (MAINPID=) and exits.
    await successor.done({
      reading: timeline.marks.reading ?? 0,
      restoredFlows: daemon.tableKeeper?.stats.restoredFlows ?? 0,
      timeline: timeline.relative(),
    });
  }
  // systemd (Type=notify): ready once forwarding is set up; the watchdog pings only while the
  // data path is healthy (the same check as /readyz).
  notifier.ready(forwardingStatus(daemon.config, daemon.device?.name));
  const readiness = daemon.readiness;
  notifier.startWatchdog(() => (readiness ? readiness() : "data path not running"));
  // Keep running: signals end the process (shutdown.ts calls process.exit).
  return new Promise<number>(() => undefined);
}

/** STATUS= text for systemctl status: what is being translated to what. */
function forwardingStatus(cfg: TunnatConfig, tun?: string): string {
  const inside = cfg.nat.inside.map(formatCidr).join(" ");
  const nat = cfg.nat.natAddresses.map(formatIpv4).join(" ");
  return `forwarding ${inside} via ${tun ?? cfg.control.tun} as ${nat}`;
}
