/**
 * One gateway of an HA pair, put together: the event ring on the flow table, the sync endpoint
 * over UDP, the controller and the takeovers for this network (L2, EC2). The daemon hands it
 * only what it needs (HaHost); nothing here reaches into the daemon.
 */

import { formatIpv4 } from "../wire/addr.js";
import type { HaSettings } from "./config.js";
import { HaController, type HaRole, type Takeover } from "./controller.js";
import { EventRing, type FlowFields } from "./events.js";
import { type FifoReader, readKeepalivedFifo } from "./keepalived.js";
import type { CommandRunner } from "./l2.js";
import { L2Takeover } from "./l2.js";
import { Role } from "./protocol.js";
import type { HaSnapshot } from "./snapshot.js";
import { SyncEndpoint, type SyncTable, type Transport, udpTransport } from "./sync.js";

export interface HaHost {
  table: SyncTable & FlowFields;
  /** The ring the table's flowEvent hook feeds (created with createRing before the table). */
  ring: EventRing;
  nowSec(): number;
  nowMs(): number;
  /** Turn the data path's forwarding on (active) or off (standby). */
  setForwarding(on: boolean): void;
  runner: CommandRunner;
  outsideInterface: string | undefined;
  /** The NAT addresses (host order numbers). */
  natAddresses: number[];
  log: {
    info(o: object, m: string): void;
    warn(o: object, m: string): void;
    error(o: object, m: string): void;
  };
  /** Tests: a transport instead of UDP; takeovers instead of L2/EC2. */
  transport?: Transport;
  takeovers?: Takeover[];
}

/** The ring for the table's hooks; attach() it to the table once that exists. */
export function createRing(s: HaSettings): EventRing {
  return new EventRing(s.ringEvents);
}

/** keepalived's states (notify script) and ours, to a role. */
export function roleFromState(state: string): HaRole | null {
  const s = state.toLowerCase();
  if (s === "active" || s === "master") return "active";
  if (s === "standby" || s === "backup" || s === "fault" || s === "stop") return "standby";
  return null;
}

export class HaRuntime {
  constructor(
    readonly settings: HaSettings,
    readonly sync: SyncEndpoint,
    readonly controller: HaController,
    readonly takeovers: Takeover[],
    private readonly fifo: FifoReader | undefined,
  ) {}

  /** The `ha` group of `tunnat stats` (and what `tunnat ha status` prints). */
  snapshot(): HaSnapshot {
    const s = this.sync;
    const st = s.stats;
    const c = this.controller;
    return {
      role: c.role,
      arbiter: this.settings.arbiter,
      peer: s.peerState,
      peerRole:
        s.peerRole === Role.ACTIVE ? "active" : s.peerRole === Role.STANDBY ? "standby" : "unknown",
      synced: c.role === "standby" ? s.isSynced : s.peerSynced,
      term: s.term,
      fenced: c.fenced,
      failovers: c.stats.failovers,
      demotions: c.stats.demotions,
      lastTransition: c.stats.lastTransition,
      lastReason: c.stats.lastReason,
      takeoverFailures: c.stats.takeoverFailures,
      eventsSent: st.eventsSent,
      eventsAcked: st.eventsAcked,
      eventsApplied: st.eventsApplied,
      messagesSent: st.messagesSent,
      messagesResent: st.messagesResent,
      messagesReceived: st.messagesReceived,
      bulkResyncsSent: st.bulkResyncsSent,
      bulkResyncsReceived: st.bulkResyncsReceived,
      overflows: st.overflows,
      gaps: st.gaps,
      applyFailures: st.applyFailures,
      rejected: { ...st.rejected },
      lagSeconds: s.lagSeconds(),
      queuedMessages: s.queued.messages,
      queuedEvents: s.queued.events,
    };
  }

  /** `tunnat ha role STATE` (keepalived's notify script) and `tunnat ha status`. */
  async command(req: { action?: unknown; state?: unknown }): Promise<HaSnapshot> {
    if (req.action === "role") {
      const role = roleFromState(String(req.state ?? ""));
      if (role === null)
        throw new Error(
          `bad state ${JSON.stringify(req.state)}: expected active, standby, master, backup, fault or stop`,
        );
      await this.controller.setRole(role, `tunnat ha role ${String(req.state)}`);
    } else if (req.action !== "status") {
      throw new Error(`bad action ${JSON.stringify(req.action)}: expected role or status`);
    }
    return this.snapshot();
  }

  async stop(): Promise<void> {
    this.fifo?.close();
    this.controller.stop();
    await this.sync.stop();
  }
}

export async function startHa(s: HaSettings, host: HaHost): Promise<HaRuntime> {
  host.ring.attach(host.table);
  const transport =
    host.transport ??
    (await udpTransport(s.listen, s.peer, (e) =>
      host.log.warn({ err: e.message }, "HA sync socket error"),
    ));
  const sync = new SyncEndpoint(
    {
      table: host.table,
      ring: host.ring,
      nowSec: host.nowSec,
      nowMs: host.nowMs,
      transport,
      log: host.log,
    },
    s.sync,
  );
  const takeovers: Takeover[] = host.takeovers ?? [];
  if (!host.takeovers) {
    if (s.garp && host.outsideInterface !== undefined)
      takeovers.push(
        new L2Takeover(
          {
            outsideInterface: host.outsideInterface,
            natAddresses: host.natAddresses.map(formatIpv4),
          },
          host.runner,
        ),
      );
    if (s.ec2) {
      const { Ec2Takeover } = await import("./ec2.js");
      takeovers.push(new Ec2Takeover(s.ec2, Ec2Takeover.client(s.ec2)));
    }
  }
  const controller = new HaController(
    { sync, setForwarding: host.setForwarding, takeovers, nowMs: host.nowMs, log: host.log },
    {
      arbiter: s.arbiter,
      heartbeatMs: s.sync.heartbeatMs,
      misses: s.sync.misses,
      priority: s.sync.priority,
      checkMs: s.ec2?.checkMs ?? 5000,
      retryMs: 2000,
    },
  );
  // Start as the standby: let go of what the plumbing took (the proxy ARP entries) until told.
  for (const t of takeovers)
    await t
      .standby()
      .catch((e: unknown) =>
        host.log.warn({ takeover: t.name, err: String(e) }, "HA: letting go failed"),
      );
  let fifo: FifoReader | undefined;
  if (s.keepalivedFifo !== undefined) {
    fifo = await readKeepalivedFifo(s.keepalivedFifo, s.keepalivedInstance, (state) => {
      const role = roleFromState(state);
      if (role !== null) void controller.setRole(role, `keepalived ${state}`);
    });
  }
  sync.start();
  controller.start();
  host.log.info(
    {
      arbiter: s.arbiter,
      listen: `${s.listen.host}:${s.listen.port}`,
      peer: `${s.peer.host}:${s.peer.port}`,
    },
    "HA: standby, syncing",
  );
  return new HaRuntime(s, sync, controller, takeovers, fifo);
}
