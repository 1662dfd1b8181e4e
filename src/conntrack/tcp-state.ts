/**
 * The TCP state a NAT needs: enough to pick the idle timer, shaped by RFC 6146 §3.5.2 (the
 * state machine RFC 7857 §3.1 asks NAT44 to follow). The NAT never validates sequence numbers;
 * it only watches SYN, FIN and RST in each direction.
 *
 *   NONE --out SYN--> SYN_SENT --in SYN (with or without ACK)--> ESTABLISHED
 *   NONE --in SYN--> SYN_RECV --out SYN--> ESTABLISHED       (inbound open through EIF/ADF)
 *   ESTABLISHED --out FIN--> FIN_OUT --in FIN--> FIN_BOTH
 *   ESTABLISHED --in FIN--> FIN_IN --out FIN--> FIN_BOTH
 *   any --RST--> RST (RFC 6146 TRANS) --any non-RST--> ESTABLISHED
 *   FIN_BOTH / CLOSED --out SYN without ACK--> SYN_SENT  (the 5-tuple is reopened)
 *
 * Simultaneous open (RFC 5382 REQ-2a) needs nothing special: the inside SYN puts the flow in
 * SYN_SENT, and the outside SYN without ACK that crosses it moves it to ESTABLISHED.
 */

export const TcpState = {
  /** Created, no SYN seen yet: a flow picked up mid-stream from a bare ACK (Translator.outbound). */
  NONE: 0,
  /** Inside sent a SYN. */
  SYN_SENT: 1,
  /** Outside sent the first SYN (inbound open on a mapping, RFC 6146 "V4 INIT"). */
  SYN_RECV: 2,
  ESTABLISHED: 3,
  /** Inside sent FIN. */
  FIN_OUT: 4,
  /** Outside sent FIN. */
  FIN_IN: 5,
  /** Both sides sent FIN: transitory timer, no longer refreshed (RFC 6146 "V4 FIN + V6 FIN RCV"). */
  FIN_BOTH: 6,
  /** A RST was seen: kept for the transitory time (RFC 7857 §3.1: "SHOULD" 4 min), RFC 6146 TRANS. */
  RST: 7,
  /** Not a live flow. */
  CLOSED: 8,
} as const;
export type TcpState = (typeof TcpState)[keyof typeof TcpState];

/** Display names, indexed by TcpState value (for `tunnat flows`). */
export const TCP_STATE_NAMES: readonly string[] = [
  "NONE",
  "SYN_SENT",
  "SYN_RECV",
  "ESTABLISHED",
  "FIN_OUT",
  "FIN_IN",
  "FIN_BOTH",
  "RST",
  "CLOSED",
];

/** TCP header flag bits (byte 13 of the header). */
export const TcpFlag = {
  FIN: 0x01,
  SYN: 0x02,
  RST: 0x04,
  PSH: 0x08,
  ACK: 0x10,
} as const;

/** Does the state use the established (long) timer? RFC 6146: ESTABLISHED and the FIN_RCV states. */
export function usesEstablishedTimer(state: number): boolean {
  return state === TcpState.ESTABLISHED || state === TcpState.FIN_OUT || state === TcpState.FIN_IN;
}

/**
 * The state after a segment with `flags` crosses the NAT. Pure: counting and timers are the
 * table's business (FlowTable.tcpUpdate).
 */
export function tcpNext(state: number, flags: number, outbound: boolean): number {
  if ((flags & TcpFlag.RST) !== 0) return state === TcpState.CLOSED ? state : TcpState.RST;
  const syn = (flags & TcpFlag.SYN) !== 0;
  const fin = (flags & TcpFlag.FIN) !== 0;
  switch (state) {
    case TcpState.NONE:
      if (syn) return outbound ? TcpState.SYN_SENT : TcpState.SYN_RECV;
      // Loose pick-up of a connection the table lost (restart, eviction): the remote answering
      // with an ACK proves a connection both ends believe in (nf_conntrack_tcp_loose).
      if (!outbound && (flags & TcpFlag.ACK) !== 0) return TcpState.ESTABLISHED;
      return state;
    case TcpState.SYN_SENT:
      // RFC 6146 §3.5.2.2 "V6 INIT": a SYN from the outside establishes, whether it is the
      // SYN-ACK or the crossing SYN of a simultaneous open.
      return syn && !outbound ? TcpState.ESTABLISHED : state;
    case TcpState.SYN_RECV:
      return syn && outbound ? TcpState.ESTABLISHED : state;
    case TcpState.ESTABLISHED:
      if (fin) return outbound ? TcpState.FIN_OUT : TcpState.FIN_IN;
      return state;
    case TcpState.FIN_OUT:
      return fin && !outbound ? TcpState.FIN_BOTH : state;
    case TcpState.FIN_IN:
      return fin && outbound ? TcpState.FIN_BOTH : state;
    case TcpState.FIN_BOTH:
    case TcpState.CLOSED:
      return syn && outbound && (flags & TcpFlag.ACK) === 0 ? TcpState.SYN_SENT : state;
    case TcpState.RST:
      // RFC 6146 §3.5.2.2 TRANS: "a packet other than a RST" puts the session back to ESTABLISHED.
      return TcpState.ESTABLISHED;
    default:
      return state;
  }
}
