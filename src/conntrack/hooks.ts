/**
 * Callbacks of the connection table, for the mapping log (control/mapping-log.ts) and the flow
 * events of `tunnat flows --follow` (control/flow-events.ts).
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
  /** Called once per flow created, after its fields are set (never per packet). */
  flowCreated?(flow: number, now: number): void;
  /** Called once per flow removed, before its fields are cleared (never per packet). */
  flowRemoved?(flow: number, now: number): void;
}
