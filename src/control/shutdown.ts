/**
 * Signals (docs/architecture.md §Decisions): SIGTERM/SIGINT stop the loop, remove the plumbing and close the TUN,
 * then exit 0 within a 2 s budget (systemd's stop and `docker stop` wait, then kill; a daemon that
 * is killed mid-way would leave rules behind). A second signal exits at once. SIGHUP reloads.
 * SIGUSR2 starts a handover restart (control/handover.ts, `tunnat restart`).
 */
import type { Logger } from "pino";

export interface ShutdownOptions {
  log: Logger;
  /** Undo everything; must resolve within the budget. */
  stop: () => Promise<void>;
  reload?: () => void | Promise<void>;
  /** SIGUSR2: a handover restart. */
  handover?: () => unknown;
  /** Total budget from signal to exit, ms. */
  budgetMs?: number;
  /** Injected for tests. */
  exit?: (code: number) => void;
}

export interface ShutdownHandle {
  /**
   * Run the stop sequence as if a signal had arrived; resolves with the exit code used, at least
   * `code` (a failure stops cleanly but still exits non-zero, so systemd restarts the service).
   */
  trigger(reason: string, code?: number): Promise<number>;
  uninstall(): void;
}

export function installSignalHandlers(opts: ShutdownOptions): ShutdownHandle {
  const budget = opts.budgetMs ?? 2000;
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  let stopping: Promise<number> | null = null;

  const trigger = (reason: string, minCode = 0): Promise<number> => {
    if (stopping) return stopping;
    opts.log.info({ reason }, "stopping");
    let timer: NodeJS.Timeout | undefined;
    // Leave a margin below the budget for process teardown itself.
    const deadline = new Promise<number>((resolve) => {
      timer = setTimeout(() => {
        opts.log.error({ budgetMs: budget }, "stop did not finish in time; exiting anyway");
        resolve(1);
      }, budget - 300);
      timer.unref();
    });
    const work = opts.stop().then(
      () => 0,
      (e: unknown) => {
        opts.log.error({ err: e }, "stop failed");
        return 1;
      },
    );
    stopping = Promise.race([work, deadline]).then((result) => {
      const code = Math.max(result, minCode);
      if (timer) clearTimeout(timer);
      opts.log.info({ code }, "stopped");
      exit(code);
      return code;
    });
    return stopping;
  };

  const onTerm = (sig: NodeJS.Signals) => {
    if (stopping) {
      opts.log.warn({ signal: sig }, "second signal: exiting now");
      exit(1);
      return;
    }
    void trigger(sig);
  };
  const onHup = () => {
    if (!opts.reload) return;
    Promise.resolve()
      .then(() => opts.reload?.())
      .catch((e: unknown) => opts.log.error({ err: e }, "reload failed; keeping the old settings"));
  };
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onTerm);
  process.on("SIGHUP", onHup);
  const onUsr2 = () => {
    if (stopping || !opts.handover) return;
    Promise.resolve()
      .then(() => opts.handover?.())
      .catch((e: unknown) => opts.log.error({ err: e }, "handover restart failed"));
  };
  process.on("SIGUSR2", onUsr2);
  return {
    trigger,
    uninstall() {
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onTerm);
      process.off("SIGHUP", onHup);
      process.off("SIGUSR2", onUsr2);
    },
  };
}
