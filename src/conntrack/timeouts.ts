/**
 * Idle timers per protocol and TCP state, flattened into a lookup table so that a refresh is one
 * array read. Values are whole seconds (NatConfig.timeouts, already validated by control/).
 */
import type { Timeouts } from "../nat/config.js";
import { TCP_STATE_NAMES, usesEstablishedTimer } from "./tcp-state.js";

const TCP = 6;
const UDP = 17;

export class TimeoutTable {
  /** Seconds per TcpState value. */
  readonly tcp = new Uint32Array(TCP_STATE_NAMES.length);
  udp = 0;
  icmp = 0;

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
    this.udp = t.udp;
    this.icmp = t.icmp;
  }

  /** Idle seconds for a flow of `proto` in `state` (state matters only for TCP). */
  forState(proto: number, state: number): number {
    if (proto === TCP) return this.tcp[state];
    return proto === UDP ? this.udp : this.icmp;
  }
}
