/**
 * ICMP errors: rewriting the datagram embedded in an error (RFC 5508 §4, RFC 5508 REQ-4/REQ-5) and
 * generating the few packets the core originates itself (ICMP 3/13 when no mapping can be made,
 * RFC 5508 REQ-8 / RFC 6888 REQ-11b; a TCP RST for an expired flow in the `aws` preset).
 *
 * Everything is done in place in the caller's slot, which must have room for 28 more bytes than the
 * packet (device slots are 64 KiB+). Checksums of the embedded packet are adjusted incrementally and
 * every change to the ICMP payload is folded into the ICMP checksum, which covers it.
 */
import { adjust, delta16, delta32, fold, sum } from "../wire/checksum.js";
import * as icmp from "../wire/icmp.js";
import * as ipv4 from "../wire/ipv4.js";
import * as tcp from "../wire/tcp.js";
import * as udp from "../wire/udp.js";

/** RFC 1812 §4.3.2.3: an ICMP error carries as much of the datagram as fits in 576 bytes. */
const MAX_ERROR_LEN = 576;
/** RFC 1812 §4.3.2.5: ICMP errors carry precedence 6, internetwork control (as Linux icmp_send). */
const TOS_INTERNETWORK_CONTROL = 0xc0;

/**
 * Validate the datagram embedded in the ICMP error at `icmpOff` (whose message is `icmpLen` bytes).
 * Returns the embedded IP header length, or -1 if the embedded header is truncated, not IPv4, or
 * carries fewer than the 8 transport bytes that hold ports or the echo id (RFC 792). Embedded IP
 * options are allowed and skipped (RFC 5508 REQ-3b); its total length may exceed what is present.
 */
export function checkEmbedded(buf: Uint8Array, icmpOff: number, icmpLen: number): number {
  const e = icmpOff + icmp.HEADER_LEN;
  const avail = icmpLen - icmp.HEADER_LEN;
  if (avail < ipv4.MIN_HEADER_LEN + 8) return -1;
  const vi = buf[e + ipv4.VER_IHL]!;
  if (vi >>> 4 !== 4) return -1;
  const ehl = (vi & 0x0f) << 2;
  if (ehl < ipv4.MIN_HEADER_LEN || ehl + 8 > avail) return -1;
  return ehl;
}

/** RFC 5508 REQ-3a: the embedded IP header's own checksum must be right. */
export function embeddedHeaderChecksumOk(buf: Uint8Array, e: number, ehl: number): boolean {
  return fold(sum(buf, e, ehl)) === 0xffff;
}

/**
 * Rewrite one endpoint (address and port, or echo id) of the embedded datagram at `e` and keep its IP
 * checksum, its transport checksum (where present in the truncated copy) and the enclosing ICMP
 * checksum consistent. `srcSide` picks the embedded source (true) or destination (false).
 * RFC 5508 REQ-3c: the embedded transport checksum is never verified, only adjusted.
 */
export function rewriteEmbedded(
  buf: Uint8Array,
  icmpOff: number,
  icmpLen: number,
  e: number,
  ehl: number,
  srcSide: boolean,
  newAddr: number,
  newPort: number,
): void {
  const eproto = buf[e + ipv4.PROTOCOL]!;
  const addrAt = e + (srcSide ? ipv4.SRC : ipv4.DST);
  const oldAddr = ipv4.readU32(buf, addrAt);
  const l4 = e + ehl;
  const l4avail = icmpOff + icmpLen - l4;
  // Word-level changes accumulated for the ICMP checksum.
  let icmpDelta = delta32(oldAddr, newAddr);
  ipv4.writeU32(buf, addrAt, newAddr);
  const oldIpCsum = ipv4.checksumField(buf, e);
  const newIpCsum = adjust(oldIpCsum, delta32(oldAddr, newAddr));
  ipv4.setChecksumField(buf, e, newIpCsum);
  icmpDelta += delta16(oldIpCsum, newIpCsum);

  let portAt: number;
  let csumAt = -1;
  let pseudo = true;
  if (eproto === ipv4.PROTO_ICMP) {
    // An echo inside an error: its identifier plays the port; the echo checksum has no pseudo-header.
    portAt = l4 + icmp.ID;
    csumAt = l4 + icmp.CHECKSUM;
    pseudo = false;
  } else {
    portAt = l4 + (srcSide ? udp.SRC_PORT : udp.DST_PORT);
    if (eproto === ipv4.PROTO_UDP) csumAt = l4 + udp.CHECKSUM;
    else if (eproto === ipv4.PROTO_TCP && l4avail >= tcp.CHECKSUM + 2) csumAt = l4 + tcp.CHECKSUM;
  }
  const oldPort = ipv4.readU16(buf, portAt);
  ipv4.writeU16(buf, portAt, newPort);
  icmpDelta += delta16(oldPort, newPort);

  if (csumAt >= 0) {
    const oldL4 = ipv4.readU16(buf, csumAt);
    // A zero UDP checksum means "none" (RFC 768) and stays zero.
    if (!(eproto === ipv4.PROTO_UDP && oldL4 === 0)) {
      let d = delta16(oldPort, newPort);
      if (pseudo) d += delta32(oldAddr, newAddr);
      let newL4 = adjust(oldL4, d);
      if (eproto === ipv4.PROTO_UDP && newL4 === 0) newL4 = 0xffff;
      ipv4.writeU16(buf, csumAt, newL4);
      icmpDelta += delta16(oldL4, newL4);
    }
  }
  icmp.setChecksumField(buf, icmpOff, adjust(icmp.checksumField(buf, icmpOff), icmpDelta));
}

/**
 * Turn the datagram at `p` (IP total length `len`) into an ICMP error about it, addressed back to its
 * source, in place. Returns the new IP length. `rest` is the 32-bit rest-of-header (e.g. next-hop MTU).
 */
export function writeIcmpError(
  buf: Uint8Array,
  p: number,
  len: number,
  type: number,
  code: number,
  rest: number,
  from: number,
  ident: number,
): number {
  const to = ipv4.src(buf, p);
  const quoted = Math.min(len, MAX_ERROR_LEN - ipv4.MIN_HEADER_LEN - icmp.HEADER_LEN);
  const hdr = ipv4.MIN_HEADER_LEN + icmp.HEADER_LEN;
  buf.copyWithin(p + hdr, p, p + quoted);
  const total = hdr + quoted;
  ipv4.writeHeader(
    buf,
    p,
    total,
    ident,
    false,
    64,
    ipv4.PROTO_ICMP,
    from,
    to,
    TOS_INTERNETWORK_CONTROL,
  );
  const ic = p + ipv4.MIN_HEADER_LEN;
  buf[ic + icmp.TYPE] = type;
  buf[ic + icmp.CODE] = code;
  ipv4.writeU16(buf, ic + icmp.CHECKSUM, 0);
  ipv4.writeU32(buf, ic + 4, rest);
  icmp.setChecksumField(buf, ic, fold(sum(buf, ic, icmp.HEADER_LEN + quoted)) ^ 0xffff);
  return total;
}

/**
 * Answer the TCP segment at `p` (header length `hl`, IP total `len`) with an RST to its sender, in
 * place, as RFC 9293 §3.10.7.1 prescribes for a segment that belongs to no connection: with ACK set
 * the RST takes its sequence number from that ACK, otherwise it acknowledges the segment.
 * Returns the new IP length (40).
 */
export function writeRst(
  buf: Uint8Array,
  p: number,
  hl: number,
  len: number,
  ident: number,
): number {
  const t = p + hl;
  const from = ipv4.dst(buf, p);
  const to = ipv4.src(buf, p);
  const sport = tcp.dstPort(buf, t);
  const dport = tcp.srcPort(buf, t);
  const flags = tcp.flags(buf, t);
  const segLen =
    len - hl - tcp.headerLength(buf, t) + (flags & tcp.SYN ? 1 : 0) + (flags & tcp.FIN ? 1 : 0);
  const seqIn = tcp.seq(buf, t);
  const ackIn = tcp.ack(buf, t);
  const total = ipv4.MIN_HEADER_LEN + tcp.MIN_HEADER_LEN;
  ipv4.writeHeader(buf, p, total, ident, true, 64, ipv4.PROTO_TCP, from, to);
  const r = p + ipv4.MIN_HEADER_LEN;
  tcp.setSrcPort(buf, r, sport);
  tcp.setDstPort(buf, r, dport);
  if (flags & tcp.ACK) {
    tcp.setSeq(buf, r, ackIn);
    tcp.setAck(buf, r, 0);
    buf[r + tcp.FLAGS] = tcp.RST;
  } else {
    tcp.setSeq(buf, r, 0);
    tcp.setAck(buf, r, (seqIn + segLen) >>> 0);
    buf[r + tcp.FLAGS] = tcp.RST | tcp.ACK;
  }
  buf[r + tcp.DATA_OFF] = 5 << 4;
  ipv4.writeU16(buf, r + tcp.WINDOW, 0);
  ipv4.writeU16(buf, r + tcp.CHECKSUM, 0);
  ipv4.writeU16(buf, r + tcp.URGENT, 0);
  const ps =
    (from >>> 16) +
    (from & 0xffff) +
    (to >>> 16) +
    (to & 0xffff) +
    ipv4.PROTO_TCP +
    tcp.MIN_HEADER_LEN;
  tcp.setChecksumField(buf, r, fold(sum(buf, r, tcp.MIN_HEADER_LEN, ps)) ^ 0xffff);
  return total;
}
