/**
 * Idle timers per protocol and TCP state, flattened into a lookup table so that a refresh is one
 * array read. Values are whole seconds (ConntrackConfig.timeouts, already validated by control/).
 */
import { PROTO_SLOTS, PROTOCOLS, Proto, protoSlot, type Timeouts } from "../base/protocols.js";
import { TCP_STATE_NAMES, usesEstablishedTimer } from "./tcp-state.js";

export class TimeoutTable {
  /** Seconds per TcpState value. */
  readonly tcp = new Uint32Array(TCP_STATE_NAMES.length);
  /** Seconds per protocol slot, for the protocols without states (one timer each). */
  private readonly bySlot = new Uint32Array(PROTO_SLOTS);

  constructor(t: Timeouts) {
    this.set(t);
  }

  /** Take new values (SIGHUP); flows keep their current expiry until their next refresh. */
  set(t: Timeouts): void {
    for (let s = 0; s < this.tcp.length; s++) {
      // RFC 5382 REQ-5 / RFC 6146: established and half-closed use the long timer; opening,
      // both-FIN and post-RST use the transitory one (RFC 7857 §3.1 wants 4 min after a RST).
      this.tcp[s] = usesEstablishedTimer(s) ? t.tcpEstablished : t.tcpTransitory;
    }
    for (const p of PROTOCOLS) this.bySlot[p.slot] = t[p.timeouts[0]!.key];
  }

  /** Idle seconds for a flow of `proto` in `state` (state matters only for TCP). */
  forState(proto: number, state: number): number {
    if (proto === Proto.TCP) return this.tcp[state];
    return this.bySlot[protoSlot(proto)];
  }
}
