/**
 * What an HA pair's gateway shows of itself: the `ha` group of `tunnat stats`, `tunnat ha status`,
 * and what the tunnat_ha_* metrics read (ha/metrics.ts). Plain data, built on demand.
 */
export interface HaSnapshot {
  role: "active" | "standby";
  arbiter: "keepalived" | "heartbeat";
  peer: "unknown" | "up" | "down";
  peerRole: "active" | "standby" | "unknown";
  /** The standby's table follows the active's stream (on the active: what the standby says). */
  synced: boolean;
  term: number;
  fenced: boolean;
  failovers: number;
  demotions: number;
  lastTransition: string;
  lastReason: string;
  takeoverFailures: Record<string, number>;
  eventsSent: number;
  eventsAcked: number;
  eventsApplied: number;
  messagesSent: number;
  messagesResent: number;
  messagesReceived: number;
  bulkResyncsSent: number;
  bulkResyncsReceived: number;
  overflows: number;
  gaps: number;
  applyFailures: number;
  rejected: Record<string, number>;
  lagSeconds: number;
  queuedMessages: number;
  queuedEvents: number;
}

/** A snapshot of a standby that has heard nothing yet (tests, the docs check). */
export function emptyHaSnapshot(): HaSnapshot {
  return {
    role: "standby",
    arbiter: "keepalived",
    peer: "unknown",
    peerRole: "unknown",
    synced: false,
    term: 0,
    fenced: false,
    failovers: 0,
    demotions: 0,
    lastTransition: "",
    lastReason: "",
    takeoverFailures: {},
    eventsSent: 0,
    eventsAcked: 0,
    eventsApplied: 0,
    messagesSent: 0,
    messagesResent: 0,
    messagesReceived: 0,
    bulkResyncsSent: 0,
    bulkResyncsReceived: 0,
    overflows: 0,
    gaps: 0,
    applyFailures: 0,
    rejected: {},
    lagSeconds: 0,
    queuedMessages: 0,
    queuedEvents: 0,
  };
}
