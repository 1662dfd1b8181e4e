/**
 * Counters the connection table keeps: plain numbers and typed arrays, bumped on the packet path
 * without allocation, read by control/metrics.ts at scrape time. The table never counts drops:
 * it returns why it refused a flow (Refusal) and nat/ counts the drop.
 */
import { PROTO_SLOTS } from "../base/protocols.js";
import { TCP_STATE_NAMES } from "./tcp-state.js";

/** States a flow can be in: TcpState for TCP; 0 (unreplied) or 1 (replied) for the others. */
export const STATE_SLOTS = TCP_STATE_NAMES.length;

export class ConntrackStats {
  flowsCreated = 0;
  flowsRemoved = 0;
  mappingsCreated = 0;
  mappingsRemoved = 0;
  /** Outbound TCP SYNs that opened a flow. */
  connectionAttempts = 0;
  /** TCP flows that reached ESTABLISHED. */
  connectionsEstablished = 0;
  /** TCP flows currently ESTABLISHED (gauge kept incrementally). */
  tcpEstablishedNow = 0;
  /** New mappings refused because no outside port (or echo id) was free. */
  portAllocationErrors = 0;
  /** Flows removed because their idle timer ran out. */
  idleTimeouts = 0;
  /** Flows refused or evicted because the table was full. */
  tableFullEvents = 0;
  /** Not-yet-replied flows evicted to make room. */
  evictions = 0;
  /**
   * Live flows per (protocol slot, state): index slot * STATE_SLOTS + state. Kept on create,
   * state change and removal, so a scrape reads PROTO_SLOTS * STATE_SLOTS numbers instead of
   * walking the table.
   */
  readonly flowsByState = new Float64Array(PROTO_SLOTS * STATE_SLOTS);

  /** Live flows of one protocol slot (base/protocols.ts), all states. */
  flowsOf(slot: number): number {
    let n = 0;
    const b = slot * STATE_SLOTS;
    for (let s = 0; s < STATE_SLOTS; s++) n += this.flowsByState[b + s];
    return n;
  }
}
