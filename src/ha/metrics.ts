/**
 * The HA pair's Prometheus series (documented in docs/observability.md), read at scrape time
 * from a snapshot of the runtime: role, peer state, sync counters and lag, failovers.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { HaSnapshot } from "./snapshot.js";

export function registerHaMetrics(reg: Registry, read: () => HaSnapshot): void {
  // One snapshot per scrape: the first collect of a scrape takes it, the others reuse it.
  let snap: HaSnapshot | null = null;
  let at = -1;
  const get = (): HaSnapshot => {
    const now = Date.now();
    if (snap === null || now - at > 100) {
      snap = read();
      at = now;
    }
    return snap;
  };
  const gauge = (name: string, help: string, f: (s: HaSnapshot) => number) =>
    new Gauge({
      name,
      help,
      registers: [reg],
      collect() {
        this.set(f(get()));
      },
    });
  const counter = (name: string, help: string, f: (s: HaSnapshot) => number) =>
    new Counter({
      name,
      help,
      registers: [reg],
      collect() {
        this.reset();
        this.inc(f(get()));
      },
    });
  new Gauge({
    name: "tunnat_ha_role",
    help: "1 for this gateway's current HA role (active or standby), 0 for the other",
    labelNames: ["role"],
    registers: [reg],
    collect() {
      const active = get().role === "active";
      this.set({ role: "active" }, active ? 1 : 0);
      this.set({ role: "standby" }, active ? 0 : 1);
    },
  });
  new Gauge({
    name: "tunnat_ha_peer_up",
    help: "1 while the peer's heartbeats arrive; the state label says unknown, up or down",
    labelNames: ["state"],
    registers: [reg],
    collect() {
      this.reset();
      const p = get().peer;
      this.set({ state: p }, p === "up" ? 1 : 0);
    },
  });
  gauge(
    "tunnat_ha_synced",
    "1 when the standby's table follows the active's stream completely",
    (s) => (s.synced ? 1 : 0),
  );
  gauge(
    "tunnat_ha_sync_lag_seconds",
    "age of the oldest unacknowledged sync message",
    (s) => s.lagSeconds,
  );
  gauge("tunnat_ha_sync_queued_events", "flow events waiting to be sent", (s) => s.queuedEvents);
  gauge(
    "tunnat_ha_sync_unacked_messages",
    "sync messages sent and not yet acknowledged",
    (s) => s.queuedMessages,
  );
  counter("tunnat_ha_sync_events_sent_total", "flow records sent to the peer", (s) => s.eventsSent);
  counter(
    "tunnat_ha_sync_events_acked_total",
    "flow records the peer acknowledged",
    (s) => s.eventsAcked,
  );
  counter(
    "tunnat_ha_sync_events_applied_total",
    "flow records applied from the peer",
    (s) => s.eventsApplied,
  );
  counter(
    "tunnat_ha_sync_messages_resent_total",
    "sync messages sent again",
    (s) => s.messagesResent,
  );
  counter(
    "tunnat_ha_sync_bulk_resyncs_total",
    "bulk resyncs sent to the peer",
    (s) => s.bulkResyncsSent,
  );
  counter(
    "tunnat_ha_sync_overflows_total",
    "times the queue overflowed or the peer fell silent and a bulk resync replaced what was queued",
    (s) => s.overflows,
  );
  counter("tunnat_ha_failovers_total", "times this gateway became active", (s) => s.failovers);
  new Counter({
    name: "tunnat_ha_takeover_failures_total",
    help: "takeover attempts that failed (each is retried), by takeover (garp, ec2)",
    labelNames: ["takeover"],
    registers: [reg],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(get().takeoverFailures)) this.inc({ takeover: k }, v);
    },
  });
  new Counter({
    name: "tunnat_ha_sync_rejected_total",
    help: "sync datagrams refused, by reason (mac: wrong key or tampered)",
    labelNames: ["reason"],
    registers: [reg],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(get().rejected)) this.inc({ reason: k }, v);
    },
  });
}
