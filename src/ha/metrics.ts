/**
 * The HA pair's Prometheus series, read at scrape time from the runtime's counters.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { HaRuntime } from "./ha.js";

export function registerHaMetrics(reg: Registry, ha: HaRuntime): void {
  const s = ha.sync;
  const gauge = (name: string, help: string, read: () => number, labelNames: string[] = []) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [reg],
      collect() {
        this.set(read());
      },
    });
  const counter = (name: string, help: string, read: () => number) =>
    new Counter({
      name,
      help,
      registers: [reg],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  new Gauge({
    name: "tunnat_ha_role",
    help: "1 for this gateway's current HA role (active or standby), 0 for the other",
    labelNames: ["role"],
    registers: [reg],
    collect() {
      const active = ha.controller.role === "active";
      this.set({ role: "active" }, active ? 1 : 0);
      this.set({ role: "standby" }, active ? 0 : 1);
    },
  });
  new Gauge({
    name: "tunnat_ha_peer_up",
    help: "1 while the peer's heartbeats arrive (state unknown, up or down as the label)",
    labelNames: ["state"],
    registers: [reg],
    collect() {
      this.reset();
      this.set({ state: s.peerState }, s.peerState === "up" ? 1 : 0);
    },
  });
  gauge(
    "tunnat_ha_synced",
    "1 when the standby's table follows the active's stream completely",
    () => ((ha.controller.role === "standby" ? s.isSynced : s.peerSynced) ? 1 : 0),
  );
  gauge("tunnat_ha_sync_lag_seconds", "age of the oldest unacknowledged sync message", () =>
    s.lagSeconds(),
  );
  gauge("tunnat_ha_sync_queued_events", "flow events waiting to be sent", () => s.queued.events);
  gauge(
    "tunnat_ha_sync_unacked_messages",
    "sync messages sent and not yet acknowledged",
    () => s.queued.messages,
  );
  counter(
    "tunnat_ha_sync_events_sent_total",
    "flow records sent to the peer",
    () => s.stats.eventsSent,
  );
  counter(
    "tunnat_ha_sync_events_acked_total",
    "flow records the peer acknowledged",
    () => s.stats.eventsAcked,
  );
  counter(
    "tunnat_ha_sync_events_applied_total",
    "flow records applied from the peer",
    () => s.stats.eventsApplied,
  );
  counter(
    "tunnat_ha_sync_messages_resent_total",
    "sync messages sent again",
    () => s.stats.messagesResent,
  );
  counter(
    "tunnat_ha_sync_bulk_resyncs_total",
    "bulk resyncs sent to the peer",
    () => s.stats.bulkResyncsSent,
  );
  counter(
    "tunnat_ha_sync_overflows_total",
    "times the queue overflowed or the peer fell silent and a bulk resync replaced what was queued",
    () => s.stats.overflows,
  );
  counter(
    "tunnat_ha_failovers_total",
    "times this gateway became active",
    () => ha.controller.stats.failovers,
  );
  new Counter({
    name: "tunnat_ha_takeover_failures_total",
    help: "takeover attempts that failed (each is retried), by takeover",
    labelNames: ["takeover"],
    registers: [reg],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(ha.controller.stats.takeoverFailures))
        this.inc({ takeover: k }, v);
    },
  });
  new Counter({
    name: "tunnat_ha_sync_rejected_total",
    help: "sync datagrams refused, by reason (mac: wrong key or tampered)",
    labelNames: ["reason"],
    registers: [reg],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(s.stats.rejected)) this.inc({ reason: k }, v);
    },
  });
}
