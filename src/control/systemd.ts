/**
 * The daemon's side of systemd's notify protocol (sd_notify(3), systemd.service(5) Type=notify):
 *
 *   READY=1 + STATUS=      once forwarding is set up (before it `systemctl start` keeps waiting)
 *   RELOADING=1 + MONOTONIC_USEC=, then READY=1 + STATUS=   around a SIGHUP reload
 *   STOPPING=1             when the stop sequence begins
 *   WATCHDOG=1             every WATCHDOG_USEC/2, from the event loop, only while the data path is
 *                          healthy; a stalled loop or a dead data path stops the pings and
 *                          systemd kills and restarts the service after WatchdogSec=
 *
 * Everything is a no-op without NOTIFY_SOCKET. A failed send is logged once and never stops the
 * daemon (systemd itself might be restarting).
 */
import type { Logger } from "pino";
import { errorMessage } from "../base/errors.js";
import { monotonicUsec, sdNotify } from "../io/notify.js";

export type Send = (message: string) => unknown;

export interface NotifierOptions {
  log: Logger;
  env?: Record<string, string | undefined>;
  /** Injected in tests; default sdNotify to $NOTIFY_SOCKET. */
  send?: Send;
}

export class SystemdNotifier {
  private readonly log: Logger;
  private readonly send: Send | undefined;
  private readonly env: Record<string, string | undefined>;
  private watchdogTimer: ReturnType<typeof setInterval> | undefined;
  private warned = false;
  private unhealthy: string | null = null;

  constructor(opts: NotifierOptions) {
    this.log = opts.log;
    this.env = opts.env ?? process.env;
    const socket = this.env.NOTIFY_SOCKET;
    this.send = opts.send ?? (socket ? (m: string) => sdNotify(m, socket) : undefined);
  }

  /** True when a service manager listens (NOTIFY_SOCKET was set). */
  get enabled(): boolean {
    return this.send !== undefined;
  }

  private notify(message: string): void {
    if (!this.send) return;
    try {
      this.send(message);
    } catch (e) {
      if (this.warned) return;
      this.warned = true;
      this.log.warn({ err: errorMessage(e) }, "cannot notify systemd (NOTIFY_SOCKET)");
    }
  }

  ready(status: string): void {
    this.notify(`READY=1\nSTATUS=${status}`);
  }

  status(status: string): void {
    this.notify(`STATUS=${status}`);
  }

  reloading(): void {
    this.notify(`RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=${monotonicUsec()}`);
  }

  /**
   * A handover restart (handover.ts): the successor `pid` is the service's main process from
   * now on. Sent by the old main process, which NotifyAccess=main allows, just before it exits.
   */
  mainPid(pid: number): void {
    this.stopWatchdog();
    this.notify(`MAINPID=${pid}\nSTATUS=handed over to pid ${pid}`);
  }

  stopping(): void {
    this.stopWatchdog();
    this.notify("STOPPING=1\nSTATUS=stopping: removing the plumbing");
  }

  /**
   * The watchdog interval systemd asked for, in ms (half of WATCHDOG_USEC, as sd_watchdog_enabled
   * advises), or undefined when none applies to this process (WATCHDOG_PID names another one).
   */
  watchdogIntervalMs(): number | undefined {
    const usec = Number(this.env.WATCHDOG_USEC);
    if (!Number.isFinite(usec) || usec <= 0) return undefined;
    const pid = this.env.WATCHDOG_PID;
    if (pid !== undefined && pid !== "" && Number(pid) !== process.pid) return undefined;
    return Math.max(1, Math.floor(usec / 2000));
  }

  /**
   * Ping WATCHDOG=1 while `health()` says null (healthy); with a reason, skip the ping and put the
   * reason in STATUS= (logged once per episode), so systemd's kill names what went wrong.
   */
  startWatchdog(health: () => string | null): void {
    const ms = this.watchdogIntervalMs();
    if (!this.send || ms === undefined || this.watchdogTimer) return;
    const tick = () => {
      const why = health();
      if (why === null) {
        if (this.unhealthy !== null) {
          this.log.info({ was: this.unhealthy }, "data path healthy again; watchdog pings resume");
          this.unhealthy = null;
          this.notify("STATUS=forwarding");
        }
        this.notify("WATCHDOG=1");
        return;
      }
      if (this.unhealthy === null)
        this.log.warn({ reason: why }, "data path unhealthy: watchdog pings withheld");
      this.unhealthy = why;
      this.notify(`STATUS=unhealthy: ${why}`);
    };
    tick();
    this.watchdogTimer = setInterval(tick, ms);
    this.watchdogTimer.unref();
  }

  stopWatchdog(): void {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    this.watchdogTimer = undefined;
  }
}
