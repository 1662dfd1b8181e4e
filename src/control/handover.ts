/**
 * A handover restart (`tunnat restart`, SIGUSR2; docs/operations.md §Restart): the running daemon
 * starts its successor and hands it the gateway without taking anything down, so no packet is
 * dropped and the gap is what it takes to save and load the table:
 *
 *   old: spawn the successor (same executable, argv and environment) with the TUN queues' fds
 *        as fds 3, 4, ... and a Node IPC channel; keep forwarding
 *   new: load modules and config, run the refusals (read-only), build the table, adopt the fd,
 *        then "ready" (nothing of the kernel touched yet: a refusal here costs nothing)
 *   old: close the control socket and the HTTP listener, stop reading the TUN (packets wait in
 *        its queue: the new process holds the same file), save the table, "go"
 *   new: restore the table, start reading, then listen, take over the plumbing's journal (its
 *        routes, rules and proxy ARP stay as they are) and the guard (atomic), "done"
 *   old: tell systemd the new main pid (MAINPID=), "main", exit 0 without removing anything
 *
 * A successor that refuses or dies before "go" leaves the old daemon forwarding as before. One
 * that dies after "go" leaves the old one nothing to go back to (its listeners are closed): it
 * removes the plumbing, keeps the guard (fail closed) and exits 1, like a failed data path.
 * What must be equal for the new process to adopt the kernel state is handoverKey(); the table's
 * own configuration check (table-state.ts) applies as at every start.
 */
import { spawn } from "node:child_process";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";

/** The environment variable that makes a `tunnat run` a successor. */
export const HANDOVER_ENV = "TUNNAT_HANDOVER";
/** Where the successor finds the TUN queues' fds: 3, 4, ... */
const FIRST_FD = 3;

/** An undo entry of the plumbing's journal (plumbing.ts), as the successor takes it over. */
export type JournalEntry =
  | { kind: "ip"; args: string[] }
  | { kind: "nft"; args: string[] }
  | { kind: "sysctl"; key: string; value: string };

/** What the old daemon tells its successor (in HANDOVER_ENV, as JSON). */
export interface HandoverOffer {
  /** The old daemon's pid. */
  pid: number;
  /** The TUN's name: what the fd is. */
  tun: string;
  /** The TUN queues' fds in the successor (one per queue). */
  fds: number[];
  /** The settings the kernel state was made from (handoverKey()), field by field. */
  key: Record<string, unknown>;
  /** The plumbing's undo journal (empty without --manage-routes). */
  journal: JournalEntry[];
}

/** The old daemon's "go": it stopped reading at `stoppedReading` (monotonic ms). */
export interface GoMessage {
  t: "go";
  stoppedReading: number;
  saved: boolean;
}

/** The successor's "done": its timeline (monotonic ms) and what it restored. */
export interface DoneMessage {
  t: "done";
  reading: number;
  restoredFlows: number;
  timeline: Record<string, number>;
}

type ToSuccessor = GoMessage | { t: "main" };
type ToPredecessor = { t: "ready" } | { t: "refused"; why: string } | DoneMessage;

/**
 * The fields of two keys that differ, named. An empty list: the successor may adopt the kernel
 * state as it is.
 */
export function keyDifferences(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)]))
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) out.push(k);
  return out;
}

/** The offer in the environment, if this process is a successor; removed from process.env. */
export function takeOffer(
  env: NodeJS.ProcessEnv = process.env,
  channel: boolean = typeof process.send === "function",
): HandoverOffer | undefined {
  const raw = env[HANDOVER_ENV];
  if (raw === undefined) return undefined;
  delete env[HANDOVER_ENV];
  let o: HandoverOffer;
  try {
    o = JSON.parse(raw) as HandoverOffer;
  } catch (e) {
    throw new TunnatError(ErrorCode.Config, `${HANDOVER_ENV} is not JSON: ${errorMessage(e)}`);
  }
  if (
    typeof o !== "object" ||
    o === null ||
    !Number.isInteger(o.pid) ||
    typeof o.tun !== "string" ||
    !Array.isArray(o.fds) ||
    o.fds.length === 0 ||
    !o.fds.every((f) => Number.isInteger(f)) ||
    typeof o.key !== "object" ||
    o.key === null ||
    !Array.isArray(o.journal)
  )
    throw new TunnatError(ErrorCode.Config, `${HANDOVER_ENV} is not a handover offer`);
  if (!channel)
    throw new TunnatError(
      ErrorCode.Config,
      `${HANDOVER_ENV} is set but there is no channel to the previous daemon (it is set by tunnat restart only)`,
    );
  return o;
}

/** The successor's side of the channel. */
export class Successor {
  private readonly got: Promise<GoMessage>;
  private readonly mainP: Promise<void>;

  constructor(readonly offer: HandoverOffer) {
    this.got = new Promise<GoMessage>((resolve, reject) => {
      process.on("message", (x: unknown) => {
        const m = x as ToSuccessor | null;
        if (m?.t === "go") resolve(m);
      });
      process.once("disconnect", () =>
        reject(
          new TunnatError(
            ErrorCode.Datapath,
            `the previous daemon (pid ${offer.pid}) went away before handing over`,
          ),
        ),
      );
    });
    // A rejection nobody awaits yet must not be an unhandled one.
    this.got.catch(() => undefined);
    this.mainP = new Promise<void>((resolve) => {
      process.on("message", (x: unknown) => {
        if ((x as ToSuccessor | null)?.t === "main") resolve();
      });
      process.once("disconnect", () => resolve());
    });
  }

  private send(m: ToPredecessor): Promise<void> {
    return new Promise((resolve) => {
      if (!process.connected || !process.send) {
        resolve();
        return;
      }
      process.send(m, undefined, {}, () => resolve());
    });
  }

  /** Everything but the kernel is ready: ask for the TUN. Rejects when the old one goes away. */
  async ready(): Promise<GoMessage> {
    await this.send({ t: "ready" });
    return this.got;
  }

  /** This start failed (before or after "go"): say why and close the channel. */
  async refuse(why: string): Promise<void> {
    await this.send({ t: "refused", why });
    if (process.connected) process.disconnect();
  }

  /** Forwarding: tell the old daemon, then wait until it made this process the main one. */
  async done(m: Omit<DoneMessage, "t">): Promise<void> {
    await this.send({ t: "done", ...m });
    await this.mainP;
    if (process.connected) process.disconnect();
  }
}

export type HandoverOutcome =
  /** The successor gave up before "go": nothing changed, the old daemon goes on. */
  | { kind: "refused"; why: string }
  /** The successor forwards: the old daemon calls confirm(), then exits 0. */
  | { kind: "done"; pid: number; done: DoneMessage; confirm: () => Promise<void> }
  /** The successor failed after "go": the old daemon stops cleanly and exits 1. */
  | { kind: "failed"; why: string };

export interface PredecessorOptions {
  /** The open TUN queues' fds. */
  fds: number[];
  offer: Omit<HandoverOffer, "fds">;
  /** Executable and arguments of the successor (default: this process's). */
  argv?: string[];
  /**
   * Stop reading, save the table, close the listeners (the successor takes them). Returns when
   * it stopped reading (monotonic ms) and whether the table was saved.
   */
  release(): Promise<{ stoppedReading: number; saved: boolean }>;
  /** Called once the successor runs, with its pid. */
  spawned?(pid: number): void;
  /** The successor must be ready within this (default 60 s; it may be loading under load). */
  timeoutMs?: number;
}

/** The old daemon's side: start the successor and hand over. Never throws. */
export function handOver(o: PredecessorOptions): Promise<HandoverOutcome> {
  const argv = o.argv ?? [process.execPath, ...process.execArgv, ...process.argv.slice(1)];
  const offer: HandoverOffer = { ...o.offer, fds: o.fds.map((_, i) => FIRST_FD + i) };
  return new Promise<HandoverOutcome>((resolve) => {
    let phase: "starting" | "releasing" | "released" | "settled" = "starting";
    let why = "";
    const settle = (r: HandoverOutcome) => {
      if (phase === "settled") return;
      phase = "settled";
      clearTimeout(timer);
      resolve(r);
    };
    // WATCHDOG_PID names the old main process: the successor pings once it is the main one.
    const env: NodeJS.ProcessEnv = { ...process.env, [HANDOVER_ENV]: JSON.stringify(offer) };
    delete env.WATCHDOG_PID;
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(argv[0] ?? process.execPath, argv.slice(1), {
        stdio: ["ignore", "inherit", "inherit", ...o.fds, "ipc"],
        env,
      });
    } catch (e) {
      resolve({ kind: "refused", why: `cannot start the successor: ${errorMessage(e)}` });
      return;
    }
    const timeoutMs = o.timeoutMs ?? 60_000;
    const timer = setTimeout(() => {
      const was = phase;
      // Our own child, by its pid: it has not taken over, or it stalled after "go".
      child.kill("SIGKILL");
      if (was === "starting")
        settle({ kind: "refused", why: `the successor was not ready in ${timeoutMs} ms` });
      else settle({ kind: "failed", why: `the successor did not finish in ${timeoutMs} ms` });
    }, timeoutMs);
    timer.unref();
    if (child.pid !== undefined) o.spawned?.(child.pid);
    child.on("error", (e) => {
      if (phase === "starting")
        settle({ kind: "refused", why: `cannot start the successor: ${errorMessage(e)}` });
    });
    child.on("exit", (code, signal) => {
      const how = `the successor exited (${signal ?? `code ${code}`})${why ? `: ${why}` : ""}`;
      if (phase === "starting") settle({ kind: "refused", why: how });
      else if (phase !== "settled") settle({ kind: "failed", why: how });
    });
    child.on("message", (x: unknown) => {
      const m = x as ToPredecessor | null;
      if (m?.t === "refused") why = String(m.why);
      else if (m?.t === "ready" && phase === "starting") {
        phase = "releasing";
        o.release().then(
          (r) => {
            if (phase !== "releasing") return;
            phase = "released";
            const go: GoMessage = { t: "go", stoppedReading: r.stoppedReading, saved: r.saved };
            child.send(go);
          },
          (e: unknown) => {
            child.kill("SIGKILL");
            settle({ kind: "failed", why: `releasing the gateway failed: ${errorMessage(e)}` });
          },
        );
      } else if (m?.t === "done" && phase === "released") {
        const pid = child.pid ?? 0;
        settle({
          kind: "done",
          pid,
          done: m,
          confirm: () =>
            new Promise<void>((res) => {
              if (!child.connected) {
                res();
                return;
              }
              child.send({ t: "main" } satisfies ToSuccessor, () => {
                if (child.connected) child.disconnect();
                res();
              });
            }),
        });
      }
    });
  });
}
