/**
 * Callbacks of the connection table, for the mapping log (control/mapping-log.ts), the HA
 * sync (src/ha/events.ts) and `tunnat flows --follow` (control/flow-events.ts).
 */
export interface FlowHooks {
  /** Called per mapping create/remove (never per packet) for the RFC 6888 §4 log. */
  mappingCreated?(
    proto: number,
    iaddr: number,
    iport: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    now: number,
  ): void;
  mappingRemoved?(
    proto: number,
    iaddr: number,
    iport: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    now: number,
    createdAt: number,
    bytesOut: number,
    bytesIn: number,
  ): void;
  /**
   * A flow was created (FlowEvent.CREATED), changed its TCP state or saw its first reply
   * (CHANGED), or is about to be removed (REMOVED: its fields are still readable). Called on
   * those transitions only, never per packet; the HA sync (src/ha/events.ts) appends to a ring.
   */
  flowEvent?(kind: number, flow: number): void;
}

/** Kinds of FlowHooks.flowEvent. */
export const FlowEvent = { CREATED: 0, CHANGED: 1, REMOVED: 2 } as const;
