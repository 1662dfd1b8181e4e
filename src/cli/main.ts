/**
 * src/cli — the `tunnat` command line (yargs). Commands: run, down, check, flows, stats, lab.
 * Contract: a bad flag or setting exits 2 with a message naming it; a runtime failure exits 1
 * with the error's code; success exits 0. Commands load the heavy modules (daemon, addon) lazily
 * so --help and --version work on any machine.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import yargs, { type Argv } from "yargs";
import { hideBin } from "yargs/helpers";
import { FIELDS, type LoadInput, loadConfig } from "../control/config.js";
import { errorMessage, exitCodeFor, isTunnatError } from "../control/errors.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";
import { packageRoot } from "./lab.js";

export function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** Add every setting of the schema as a flag (strings, so config.ts validates and names them). */
function settingsOptions(y: Argv): Argv {
  y.option("config", {
    type: "string",
    describe: "JSON config file (settings by their camelCase names)",
    group: "Settings:",
  });
  for (const f of Object.values(FIELDS)) {
    y.option(f.flag, {
      type: f.boolean ? "boolean" : "string",
      describe: `${f.describe} [env ${f.env}]${f.def !== undefined ? ` (default ${f.def})` : ""}`,
      group: "Settings:",
      requiresArg: !f.boolean,
    });
  }
  return y;
}

function fail(e: unknown): number {
  const code = isTunnatError(e) ? e.code : "TUNNAT_ERR_INTERNAL";
  process.stderr.write(`tunnat: ${errorMessage(e)} (${code})\n`);
  return isTunnatError(e) ? exitCodeFor(e.code) : 1;
}

function inputFrom(argv: Record<string, unknown>): LoadInput {
  return { flags: argv, env: process.env };
}

async function runCommand(argv: Record<string, unknown>): Promise<number> {
  const input = inputFrom(argv);
  let cfg: ReturnType<typeof loadConfig>;
  try {
    cfg = loadConfig(input);
  } catch (e) {
    return fail(e);
  }
  const { createLogger } = await import("../control/log.js");
  const { Daemon } = await import("../control/daemon.js");
  const { installSignalHandlers } = await import("../control/shutdown.js");
  const { registerExtension } = await import("../control/daemon.js");
  registerExtension((await import("../control/metrics.js")).metricsExtension);
  registerExtension((await import("../control/control-socket.js")).controlSocketExtension);
  registerExtension((await import("../control/egress-log.js")).egressLogExtension);
  const { SystemdNotifier } = await import("../control/systemd.js");
  const log = createLogger({ level: cfg.control.logLevel });
  const notifier = new SystemdNotifier({ log });
  notifier.status("starting");
  let daemon: Awaited<ReturnType<typeof Daemon.start>>;
  try {
    daemon = await Daemon.start(cfg, log);
  } catch (e) {
    log.error(
      { code: isTunnatError(e) ? e.code : undefined, err: errorMessage(e) },
      "start failed",
    );
    notifier.status(`start failed: ${errorMessage(e)}`);
    return fail(e);
  }
  const shutdown = installSignalHandlers({
    log,
    stop: () => {
      notifier.stopping();
      return daemon.stop();
    },
    reload: () => {
      notifier.reloading();
      try {
        daemon.reload(loadConfig(input));
        notifier.ready(forwardingStatus(daemon.config, daemon.device?.name));
      } catch (e) {
        // The old settings stay: say so, and leave the reloading state either way.
        notifier.ready(
          `${forwardingStatus(daemon.config, daemon.device?.name)}; reload failed: ${errorMessage(e)}`,
        );
        throw e;
      }
    },
  });
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
  // systemd (Type=notify): ready once forwarding is set up; the watchdog pings only while the
  // data path is healthy (the same check as /readyz).
  notifier.ready(forwardingStatus(daemon.config, daemon.device?.name));
  const readiness = daemon.readiness;
  notifier.startWatchdog(() => (readiness ? readiness() : "data path not running"));
  // Keep running: signals end the process (shutdown.ts calls process.exit).
  return new Promise<number>(() => undefined);
}

/** STATUS= text for systemctl status: what is being translated to what. */
function forwardingStatus(cfg: ReturnType<typeof loadConfig>, tun?: string): string {
  const inside = cfg.nat.inside.map(formatCidr).join(" ");
  const nat = cfg.nat.natAddresses.map(formatIpv4).join(" ");
  return `forwarding ${inside} via ${tun ?? cfg.control.tun} as ${nat}`;
}

async function checkCommand(argv: Record<string, unknown>): Promise<number> {
  const { runChecks, formatChecks } = await import("../control/checks.js");
  const results = await runChecks({ input: inputFrom(argv) });
  const ok = results.every((r) => r.ok);
  if (argv.json) process.stdout.write(`${JSON.stringify({ ok, checks: results }, null, 2)}\n`);
  else process.stdout.write(formatChecks(results));
  return ok ? 0 : 1;
}

/** flows/stats talk to the daemon's control socket (control/control-socket.ts). */
async function clientCommand(cmd: "flows" | "stats", argv: Record<string, unknown>) {
  const socket = String(
    argv.socket ?? process.env.TUNNAT_CONTROL_SOCKET ?? "/run/tunnat/tunnat.sock",
  );
  try {
    statSync(socket);
  } catch (e) {
    // existsSync() would also say "no" for a socket this user may not reach (EACCES).
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM")
      process.stderr.write(
        `tunnat: permission denied on ${socket}: use root, or a member of the daemon's --control-socket-group (the unit's: tunnat) (TUNNAT_ERR_CONTROL)\n`,
      );
    else
      process.stderr.write(`tunnat: daemon not reachable at ${socket} (TUNNAT_ERR_NOT_RUNNING)\n`);
    return 1;
  }
  if (cmd === "flows") return (await import("./flows.js")).flowsCommand({ ...argv, socket });
  return (await import("./stats.js")).statsCommand({ ...argv, socket });
}

export async function main(args: string[] = hideBin(process.argv)): Promise<number> {
  let exitCode = 0;
  const set = (p: Promise<number>) =>
    p.then(
      (c) => {
        exitCode = c;
      },
      (e: unknown) => {
        exitCode = fail(e);
      },
    );
  const clientOptions = (y: Argv) =>
    y
      .option("socket", {
        type: "string",
        describe: "control socket [env TUNNAT_CONTROL_SOCKET] (default /run/tunnat/tunnat.sock)",
      })
      .option("json", { type: "boolean", describe: "JSON output" });
  const labOptions = (y: Argv) =>
    y
      .option("lab-file", { type: "string", describe: "lab description (default lab/lab.json)" })
      .option("prefix", { type: "string", describe: "namespace name prefix (default tnlab)" });

  const parser = yargs(args)
    .scriptName("tunnat")
    .usage("$0 <command> [options]\n\nUserspace NAT44 gateway for Linux.")
    .command(
      "run",
      "run the NAT daemon",
      (y) => settingsOptions(y),
      (a) => set(runCommand(a as Record<string, unknown>)),
    )
    .command(
      "down",
      "remove the guard that keeps a stopped gateway closed, and a stopped run's leftovers (same settings as run)",
      (y) => settingsOptions(y),
      (a) =>
        set(
          import("./down.js").then((m) => m.downCommand(inputFrom(a as Record<string, unknown>))),
        ),
    )
    .command(
      "check",
      "report every prerequisite and the config's validity; changes nothing",
      (y) => settingsOptions(y).option("json", { type: "boolean", describe: "JSON output" }),
      (a) => set(checkCommand(a as Record<string, unknown>)),
    )
    .command(
      "flows",
      "list the running daemon's flows",
      (y) =>
        clientOptions(y)
          .option("host", { type: "string", describe: "only flows of this inside host" })
          .option("proto", { choices: ["tcp", "udp", "icmp"], describe: "only this protocol" })
          .option("state", {
            type: "string",
            describe: "only flows in this state (TCP state name, or REPLIED/UNREPLIED)",
          })
          .option("limit", { type: "number", describe: "show at most this many flows" }),
      (a) => set(clientCommand("flows", a as Record<string, unknown>)),
    )
    .command(
      "stats",
      "print the running daemon's counters",
      (y) => clientOptions(y),
      (a) => set(clientCommand("stats", a as Record<string, unknown>)),
    )
    .command("lab", "the network-namespace lab (root)", (y) =>
      y
        .command(
          "up",
          "create the lab namespaces and print their names",
          (z) => labOptions(z),
          (a) =>
            set(
              import("./lab.js").then(async (m) => {
                await m.labUp({
                  labFile: a["lab-file"] as string | undefined,
                  prefix: a.prefix as string | undefined,
                });
                return 0;
              }),
            ),
        )
        .command(
          "down",
          "remove a lab (--name) or every lab recorded",
          (z) =>
            z
              .option("name", { type: "string", describe: "lab name printed by up" })
              .option("lab-file", { type: "string", describe: "lab description" }),
          (a) =>
            set(
              import("./lab.js").then(async (m) => {
                await m.labDown({
                  name: a.name as string | undefined,
                  labFile: a["lab-file"] as string | undefined,
                });
                return 0;
              }),
            ),
        )
        .command(
          "demo",
          "up, run tunnat, send ping/HTTP/iperf3 through it, show metrics, down",
          (z) => labOptions(z),
          (a) =>
            set(
              import("./lab.js").then((m) =>
                m.labDemo({
                  labFile: a["lab-file"] as string | undefined,
                  prefix: a.prefix as string | undefined,
                }),
              ),
            ),
        )
        .demandCommand(1, "choose: tunnat lab up|down|demo"),
    )
    .demandCommand(1, "choose a command")
    .strict()
    .version(version())
    .help()
    .alias("h", "help")
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Handler errors are caught by set(); what reaches here is yargs validation (YError).
      if (err && err.name !== "YError") throw err;
      process.stderr.write(`tunnat: ${msg ?? err?.message}\nrun "tunnat --help" for usage\n`);
      exitCode = 2;
      throw new UsageError();
    });
  try {
    await parser.parseAsync();
  } catch (e) {
    if (!(e instanceof UsageError)) exitCode = fail(e);
  }
  return exitCode;
}

class UsageError extends Error {}
