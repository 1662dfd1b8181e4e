/**
 * A flow's checksum deltas, computed once when the flow is made (the VPP approach): every packet
 * of the flow then updates its checksums with one addition each (wire/checksum.ts adjust).
 */
import { Proto } from "../base/protocols.js";
import { delta16, delta32, fold } from "../wire/checksum.js";

/**
 * RFC 1624 eqn. 3 deltas of the outbound rewrite (inside addr:port -> NAT addr:port), packed as
 * ipDelta | l4Delta << 16. The IPv4 header delta covers the address; the transport delta covers
 * address (pseudo-header) and port for TCP/UDP, and only the identifier for ICMP echo (the ICMP
 * checksum has no pseudo-header).
 */
export function flowDeltas(
  proto: number,
  ia: number,
  iport: number,
  oa: number,
  oport: number,
): number {
  const ip = fold(delta32(ia, oa));
  const portPart = delta16(iport, oport);
  const l4 = fold(proto === Proto.ICMP ? portPart : ip + portPart);
  return (ip | (l4 << 16)) >>> 0;
}
