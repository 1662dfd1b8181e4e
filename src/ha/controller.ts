/**
 * Who forwards: the role of this gateway, and what changes with it.
 *
 * - Becoming active: the data path forwards at once (the table is the one the sync kept), the
 *   sync starts streaming, then the takeovers move the addresses (L2: proxy ARP and gratuitous
 *   ARP; EC2: routes and the NAT address), each retried until it succeeds while still active.
 * - Becoming standby: the data path stops forwarding first (the table changes only through the
 *   sync from then on), then the takeovers let go of the addresses.
 *
 * Split brain. With the "keepalived" arbiter, VRRP on the inside network alone decides the role
 * (`tunnat ha role` from keepalived's notify script): the sync link never promotes, so a broken
 * sync link leaves one active (whose standby goes stale and resyncs when the link is back). With
 * the "heartbeat" arbiter (EC2, no VRRP), a standby promotes when the peer is silent for
 * `misses` heartbeats; two actives that hear each other keep the one with the higher term (the
 * most recent takeover; then the higher priority), and an active whose routes were taken by the
 * peer (ownership check every `checkMs`) demotes itself and stays standby ("fenced") until it
 * hears the peer again, so a broken link cannot make the two take the routes back and forth.
 * That fencing needs EC2's routes, so config.ts accepts the heartbeat arbiter only with them.
 */
import { Role, type Role as RoleT } from "./protocol.js";
import type { PeerState, SyncEndpoint } from "./sync.js";

export type HaRole = "active" | "standby";

/** One way of moving the addresses to the active (L2, EC2). */
export interface Takeover {
  readonly name: string;
  /** Take the addresses; rejects (after its own retries) naming what failed. */
  active(): Promise<void>;
  /** Let go of them (best effort). */
  standby(): Promise<void>;
  /** Do the addresses still point here? (fencing; undefined = cannot tell) */
  owns?(): Promise<boolean>;
}

export interface ControllerDeps {
  sync: SyncEndpoint;
  setForwarding(on: boolean): void;
  takeovers: Takeover[];
  nowMs(): number;
  log?: {
    info(o: object, m: string): void;
    warn(o: object, m: string): void;
    error(o: object, m: string): void;
  };
}

export interface ControllerOptions {
  arbiter: "keepalived" | "heartbeat";
  heartbeatMs: number;
  misses: number;
  priority: number;
  /** Fencing: milliseconds between ownership checks while active (heartbeat arbiter). */
  checkMs: number;
  /** Milliseconds between retries of a takeover that failed. */
  retryMs: number;
}

class HaStats {
  failovers = 0;
  demotions = 0;
  /** Takeover steps that failed (each retried), by takeover name. */
  takeoverFailures: Record<string, number> = {};
  takeoversDone = 0;
  lastTransition = "";
  lastReason = "";
}

export class HaController {
  role: HaRole = "standby";
  readonly stats = new HaStats();
  /** The active was fenced: it stays standby until it hears the peer again. */
  fenced = false;
  /** Takeovers that still have to succeed (retried every retryMs while active). */
  private pending = new Set<Takeover>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly startedMs: number;
  private lastCheck = 0;
  private lastRetry = 0;
  private busy: Promise<void> = Promise.resolve();

  constructor(
    private readonly deps: ControllerDeps,
    private readonly opts: ControllerOptions,
  ) {
    this.startedMs = deps.nowMs();
    deps.setForwarding(false);
  }

  start(): void {
    this.timer = setInterval(
      () => this.tick(),
      Math.max(10, Math.floor(this.opts.heartbeatMs / 2)),
    );
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Resolves when the last role change's takeovers have been tried once. */
  settled(): Promise<void> {
    return this.busy;
  }

  /** Change the role (from `tunnat ha role`, or the heartbeat arbiter). */
  setRole(role: HaRole, reason: string): Promise<void> {
    if (role === this.role) return this.busy;
    const d = this.deps;
    this.role = role;
    this.stats.lastTransition = new Date().toISOString();
    this.stats.lastReason = reason;
    if (role === "active") {
      this.stats.failovers++;
      d.sync.term = Math.max(d.sync.term, d.sync.peerTerm) + 1;
      d.setForwarding(true);
      d.sync.setRole(Role.ACTIVE);
      d.log?.info({ reason, term: d.sync.term }, "HA: now active");
      for (const t of d.takeovers) this.pending.add(t);
      this.busy = this.busy.then(() => this.runPending());
    } else {
      this.stats.demotions++;
      d.setForwarding(false);
      d.sync.setRole(Role.STANDBY as RoleT);
      d.log?.info({ reason }, "HA: now standby");
      this.pending.clear();
      this.busy = this.busy.then(async () => {
        for (const t of d.takeovers)
          await t
            .standby()
            .catch((e: unknown) =>
              d.log?.warn({ takeover: t.name, err: String(e) }, "HA: letting go failed"),
            );
      });
    }
    return this.busy;
  }

  private async runPending(): Promise<void> {
    const d = this.deps;
    for (const t of [...this.pending]) {
      if (this.role !== "active") return;
      try {
        await t.active();
        this.pending.delete(t);
        this.stats.takeoversDone++;
        d.log?.info({ takeover: t.name }, "HA: takeover done");
      } catch (e) {
        this.stats.takeoverFailures[t.name] = (this.stats.takeoverFailures[t.name] ?? 0) + 1;
        d.log?.error(
          { takeover: t.name, err: e instanceof Error ? e.message : String(e) },
          "HA: takeover failed; retrying",
        );
      }
    }
  }

  /** The heartbeat arbiter, and retries of failed takeovers. */
  tick(): void {
    const d = this.deps;
    const now = d.nowMs();
    const s = d.sync;
    if (
      this.role === "active" &&
      this.pending.size > 0 &&
      now - this.lastRetry >= this.opts.retryMs
    ) {
      this.lastRetry = now;
      this.busy = this.busy.then(() => this.runPending());
    }
    if (this.opts.arbiter !== "heartbeat") return;
    const peer: PeerState = s.peerState;
    if (peer === "up") this.fenced = false;
    if (this.role === "standby") {
      if (this.fenced) return;
      const silentAtStart =
        peer === "unknown" && now - this.startedMs > this.opts.heartbeatMs * this.opts.misses;
      if (peer === "down" || silentAtStart) {
        void this.setRole("active", peer === "down" ? "peer silent" : "no peer at start");
      } else if (peer === "up" && s.peerRole === Role.STANDBY && this.outranks()) {
        void this.setRole("active", "both standby; higher priority");
      }
      return;
    }
    if (peer === "up" && s.peerRole === Role.ACTIVE && !this.keepsActive()) {
      void this.setRole("standby", "two actives; the peer took over more recently");
      return;
    }
    if (now - this.lastCheck >= this.opts.checkMs) {
      this.lastCheck = now;
      for (const t of d.takeovers) {
        if (!t.owns || this.pending.has(t)) continue;
        this.busy = this.busy.then(async () => {
          const owns = await t.owns?.().catch(() => undefined);
          if (owns === false && this.role === "active") {
            this.fenced = peer !== "up";
            // Not awaited: setRole chains onto `busy`, which is this very callback.
            void this.setRole("standby", `${t.name}: the addresses point to the peer (fenced)`);
          }
        });
      }
    }
  }

  /** Both standby: the higher priority (then the higher epoch) becomes active. */
  private outranks(): boolean {
    const s = this.deps.sync;
    if (this.opts.priority !== s.peerPriority) return this.opts.priority > s.peerPriority;
    return s.epoch > (s.peerEpochSeen ?? 0);
  }

  /** Both active: the higher term stays, then the higher priority, then the higher epoch. */
  private keepsActive(): boolean {
    const s = this.deps.sync;
    if (s.term !== s.peerTerm) return s.term > s.peerTerm;
    return this.outranks();
  }
}
