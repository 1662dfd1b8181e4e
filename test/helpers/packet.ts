/**
 * test/helpers/packet.ts — a small IPv4 packet builder and parser for tests, in the spirit of
 * gVisor's `checker`/`header` test builders: a test reads as the packets it sends and expects.
 *
 * Deliberately written without importing src/wire: it uses DataView and its own checksum loop so
 * that tests cross-check the wire code instead of repeating it. Speed does not matter here; this
 * code allocates freely and throws on misuse.
 *
 * Conventions:
 * - Addresses are dotted strings in specs and results; `ip()` / `ipStr()` convert to and from the
 *   host-order uint32 that src/wire uses.
 * - `fragOffset` is in bytes (a multiple of 8), like `ipv4.fragOffset()`.
 * - With `vnet`, a 10-byte little-endian struct virtio_net_hdr is put in front of the IP header.
 */

const enc = new TextEncoder();

/** "10.0.1.2" -> 0x0a000102 (host-order uint32, as src/wire uses). */
export function ip(s: string): number {
  const parts = s.split(".");
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${JSON.stringify(s)}`);
  let v = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) {
      throw new Error(`not an IPv4 address: ${JSON.stringify(s)}`);
    }
    v = v * 256 + Number(p);
  }
  return v >>> 0;
}

/** 0x0a000102 -> "10.0.1.2". */
export function ipStr(n: number): string {
  const v = n >>> 0;
  return `${v >>> 24}.${(v >>> 16) & 0xff}.${(v >>> 8) & 0xff}.${v & 0xff}`;
}

/** IP protocol numbers (RFC 790 / IANA), kept here so the helper does not import src/wire. */
export const PROTO = { icmp: 1, tcp: 6, udp: 17 } as const;
/** virtio_net_hdr flag: the L4 checksum holds only the pseudo-header sum (CHECKSUM_PARTIAL). */
export const VNET_NEEDS_CSUM = 1;
export const VNET_LEN = 10;

export interface VnetSpec {
  flags?: number;
  gsoType?: number;
  gsoSize?: number;
  hdrLen?: number;
  csumStart?: number;
  csumOffset?: number;
}

export interface PktSpec {
  src: string;
  dst: string;
  /** Default "tcp". A number is a raw protocol whose payload is opaque. */
  proto?: "tcp" | "udp" | "icmp" | number;
  sport?: number;
  dport?: number;
  /** TCP flags (src/wire/tcp.ts constants). Default SYN (0x02). */
  flags?: number;
  seq?: number;
  ack?: number;
  /** TCP window, default 65535. */
  window?: number;
  /** Default 8 (echo request). */
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  icmpSeq?: number;
  /** The 32-bit rest-of-header of an ICMP error (e.g. next-hop MTU in the low 16 bits). */
  icmpRest?: number;
  /** ICMP error body: the offending datagram, possibly truncated. Used instead of `payload`. */
  embedded?: Uint8Array;
  payload?: Uint8Array | string;
  /** Default 64. */
  ttl?: number;
  /** Default 0. */
  ipId?: number;
  tos?: number;
  df?: boolean;
  mf?: boolean;
  /** In bytes, a multiple of 8. A non-zero offset means no L4 header: the payload is raw. */
  fragOffset?: number;
  /** IPv4 options, a multiple of 4 bytes (at most 40). */
  ipOptions?: Uint8Array;
  udpZeroChecksum?: boolean;
  badL4Checksum?: boolean;
  badIpChecksum?: boolean;
  /**
   * Prepend a 10-byte virtio_net_hdr. With flags & NEEDS_CSUM, csumStart/csumOffset default to the
   * L4 checksum field and `partialChecksum` defaults to true; with a gsoType, hdrLen defaults to
   * the IP + L4 header length.
   */
  vnet?: VnetSpec;
  /**
   * Put only the folded pseudo-header sum in the L4 checksum field, as Linux does for
   * CHECKSUM_PARTIAL (`tcp_v4_send_check`: th->check = ~tcp_v4_check(len, saddr, daddr, 0)).
   */
  partialChecksum?: boolean;
}

/** Ones'-complement sum of big-endian 16-bit words, folded to 16 bits (RFC 1071). */
export function onesSum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += bytes[i] * 256 + bytes[i + 1];
  if (i < end) s += bytes[i] * 256;
  while (s > 0xffff) s = (s % 65536) + Math.floor(s / 65536);
  return s;
}

/** The checksum field value (complement of the folded sum). */
export function internetChecksum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0) {
  return 0xffff - onesSum(bytes, start, end, initial);
}

/** Folded sum of the TCP/UDP pseudo-header (RFC 9293 §3.1, RFC 768). */
export function pseudoSum(srcAddr: number, dstAddr: number, proto: number, l4len: number): number {
  const words = [srcAddr >>> 16, srcAddr & 0xffff, dstAddr >>> 16, dstAddr & 0xffff, proto, l4len];
  let s = words.reduce((a, b) => a + b, 0);
  while (s > 0xffff) s = (s % 65536) + Math.floor(s / 65536);
  return s;
}

function protoNumber(p: PktSpec["proto"]): number {
  if (p === undefined) return PROTO.tcp;
  if (typeof p === "number") return p;
  return PROTO[p];
}

function bytesOf(p: Uint8Array | string | undefined): Uint8Array {
  if (p === undefined) return new Uint8Array(0);
  return typeof p === "string" ? enc.encode(p) : p;
}

/** ICMP types whose body is an offending datagram (RFC 792). */
function icmpIsError(t: number): boolean {
  return t === 3 || t === 4 || t === 5 || t === 11 || t === 12;
}

/** Build one IPv4 packet (optionally behind a virtio_net_hdr). All checksums are correct unless told. */
export function build(spec: PktSpec): Uint8Array {
  const proto = protoNumber(spec.proto);
  const opts = spec.ipOptions ?? new Uint8Array(0);
  if (opts.length % 4 !== 0 || opts.length > 40) {
    throw new Error(`ipOptions must be a multiple of 4 bytes up to 40, got ${opts.length}`);
  }
  const fragOff = spec.fragOffset ?? 0;
  if (fragOff % 8 !== 0 || fragOff < 0 || fragOff > 0x1fff * 8) {
    throw new Error(`fragOffset is in bytes and must be a multiple of 8, got ${fragOff}`);
  }
  const ihl = 20 + opts.length;
  const later = fragOff !== 0; // a non-first fragment carries no L4 header
  const icmpType = spec.icmpType ?? 8;
  const body = proto === PROTO.icmp && spec.embedded ? spec.embedded : bytesOf(spec.payload);

  let l4hdr = 0;
  if (!later) {
    if (proto === PROTO.tcp) l4hdr = 20;
    else if (proto === PROTO.udp) l4hdr = 8;
    else if (proto === PROTO.icmp) l4hdr = 8;
  }
  const l4len = l4hdr + body.length;
  const total = ihl + l4len;
  if (total > 0xffff) throw new Error(`packet of ${total} bytes does not fit an IPv4 total length`);

  const vnet = spec.vnet;
  const pre = vnet ? VNET_LEN : 0;
  const out = new Uint8Array(pre + total);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const o = pre; // IP header start

  // IPv4 header (RFC 791 §3.1).
  v.setUint8(o, 0x40 | (ihl >>> 2));
  v.setUint8(o + 1, spec.tos ?? 0);
  v.setUint16(o + 2, total);
  v.setUint16(o + 4, spec.ipId ?? 0);
  v.setUint16(o + 6, (spec.df ? 0x4000 : 0) | (spec.mf ? 0x2000 : 0) | (fragOff >>> 3));
  v.setUint8(o + 8, spec.ttl ?? 64);
  v.setUint8(o + 9, proto);
  v.setUint16(o + 10, 0);
  const srcAddr = ip(spec.src);
  const dstAddr = ip(spec.dst);
  v.setUint32(o + 12, srcAddr);
  v.setUint32(o + 16, dstAddr);
  out.set(opts, o + 20);
  let ipc = internetChecksum(out, o, o + ihl);
  if (spec.badIpChecksum) ipc ^= 0x0101;
  v.setUint16(o + 10, ipc);

  const l = o + ihl; // L4 start
  let csumField = -1; // offset of the L4 checksum field relative to l, if any
  if (!later && proto === PROTO.tcp) {
    v.setUint16(l, spec.sport ?? 0);
    v.setUint16(l + 2, spec.dport ?? 0);
    v.setUint32(l + 4, (spec.seq ?? 0) >>> 0);
    v.setUint32(l + 8, (spec.ack ?? 0) >>> 0);
    v.setUint8(l + 12, 5 << 4);
    v.setUint8(l + 13, spec.flags ?? 0x02);
    v.setUint16(l + 14, spec.window ?? 65535);
    out.set(body, l + 20);
    csumField = 16;
  } else if (!later && proto === PROTO.udp) {
    v.setUint16(l, spec.sport ?? 0);
    v.setUint16(l + 2, spec.dport ?? 0);
    v.setUint16(l + 4, l4len);
    out.set(body, l + 8);
    csumField = 6;
  } else if (!later && proto === PROTO.icmp) {
    v.setUint8(l, icmpType);
    v.setUint8(l + 1, spec.icmpCode ?? 0);
    if (icmpIsError(icmpType) || spec.icmpRest !== undefined) {
      v.setUint32(l + 4, (spec.icmpRest ?? 0) >>> 0);
    } else {
      v.setUint16(l + 4, spec.icmpId ?? 0);
      v.setUint16(l + 6, spec.icmpSeq ?? 0);
    }
    out.set(body, l + 8);
    csumField = 2;
  } else {
    out.set(body, l);
  }

  const needsCsum = vnet !== undefined && ((vnet.flags ?? 0) & VNET_NEEDS_CSUM) !== 0;
  const partial = spec.partialChecksum ?? needsCsum;
  if (csumField >= 0) {
    let c: number;
    if (proto === PROTO.icmp) {
      c = partial ? 0 : internetChecksum(out, l, l + l4len);
    } else {
      const ps = pseudoSum(srcAddr, dstAddr, proto, l4len);
      if (partial) c = ps;
      else {
        c = internetChecksum(out, l, l + l4len, ps);
        // RFC 768: a computed UDP checksum of zero is sent as all ones.
        if (proto === PROTO.udp && c === 0) c = 0xffff;
      }
    }
    if (proto === PROTO.udp && spec.udpZeroChecksum) c = 0;
    if (spec.badL4Checksum) {
      // Flip bits so that neither the ones'-complement twin (0x0000/0xffff) nor UDP's "no
      // checksum" 0 can come out.
      const good = c;
      c = good ^ 0x0101;
      if (proto === PROTO.udp && c === 0) c = good ^ 0x0202;
    }
    v.setUint16(l + csumField, c);
  }

  if (vnet) {
    const flags = vnet.flags ?? 0;
    const gsoType = vnet.gsoType ?? 0;
    const hdrLen = vnet.hdrLen ?? (gsoType !== 0 ? ihl + l4hdr : 0);
    const csumStart = vnet.csumStart ?? (needsCsum ? ihl : 0);
    const csumOffset = vnet.csumOffset ?? (needsCsum && csumField >= 0 ? csumField : 0);
    v.setUint8(0, flags);
    v.setUint8(1, gsoType);
    v.setUint16(2, hdrLen, true);
    v.setUint16(4, vnet.gsoSize ?? 0, true);
    v.setUint16(6, csumStart, true);
    v.setUint16(8, csumOffset, true);
  }
  return out;
}

export interface Parsed {
  src: string;
  dst: string;
  proto: number;
  ttl: number;
  ipId: number;
  tos: number;
  /** The IP total length field (for an embedded datagram: the original length, not what is here). */
  totalLength: number;
  /** IP header length in bytes. */
  ihl: number;
  df: boolean;
  mf: boolean;
  /** In bytes. */
  fragOffset: number;
  ipChecksum: number;
  sport?: number;
  dport?: number;
  flags?: number;
  seq?: number;
  ack?: number;
  window?: number;
  /** UDP length field. */
  udpLength?: number;
  /** The L4 checksum field, when the bytes are present. */
  l4Checksum?: number;
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  icmpSeq?: number;
  /** Rest-of-header u32 of an ICMP error (bytes 4..8). */
  icmpRest?: number;
  embedded?: Parsed;
  /** True when the bytes stop before the end of the L4 header (embedded datagrams only). */
  truncated: boolean;
  /** Bytes after the L4 header (or after the IP header for other protocols/later fragments). */
  payload: Uint8Array;
  /** The virtio_net_hdr, when one was found in front of the packet. */
  vnet?: Required<VnetSpec>;
}

/** True when the bytes at `off` look like a virtio_net_hdr followed by an IPv4 header. */
export function hasVnet(buf: Uint8Array, off = 0): boolean {
  // A vnet header's first byte is a small flags field (< 8), never 0x4X like an IPv4 header.
  return (
    buf.length >= off + VNET_LEN + 20 && buf[off] >>> 4 !== 4 && buf[off + VNET_LEN] >>> 4 === 4
  );
}

export function readVnet(buf: Uint8Array, off = 0): Required<VnetSpec> {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return {
    flags: v.getUint8(off),
    gsoType: v.getUint8(off + 1),
    hdrLen: v.getUint16(off + 2, true),
    gsoSize: v.getUint16(off + 4, true),
    csumStart: v.getUint16(off + 6, true),
    csumOffset: v.getUint16(off + 8, true),
  };
}

/**
 * Parse the IPv4 packet at `off` (a leading virtio_net_hdr is detected and reported in `vnet`).
 * Throws on a malformed outer packet; an ICMP error's embedded datagram may be truncated after
 * 8 bytes of L4 header (RFC 792), which is reported as `truncated` rather than an error.
 */
export function parse(buf: Uint8Array, off = 0): Parsed {
  if (hasVnet(buf, off)) {
    const vnet = readVnet(buf, off);
    return { ...parseIp(buf, off + VNET_LEN, buf.length, false), vnet };
  }
  return parseIp(buf, off, buf.length, false);
}

function parseIp(buf: Uint8Array, off: number, end: number, embedded: boolean): Parsed {
  const where = embedded ? "embedded datagram" : "packet";
  if (end - off < 20)
    throw new Error(`${where}: ${end - off} bytes is shorter than an IPv4 header`);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const vi = v.getUint8(off);
  if (vi >>> 4 !== 4) throw new Error(`${where}: IP version ${vi >>> 4}, not 4`);
  const ihl = (vi & 0x0f) * 4;
  if (ihl < 20 || off + ihl > end) throw new Error(`${where}: bad IHL ${ihl}`);
  const totalLength = v.getUint16(off + 2);
  if (totalLength < ihl) throw new Error(`${where}: total length ${totalLength} < IHL ${ihl}`);
  // The outer packet must be complete; an embedded one is cut wherever the ICMP error ended.
  if (!embedded && off + totalLength > end) {
    throw new Error(`${where}: total length ${totalLength} beyond ${end - off} bytes`);
  }
  const stop = Math.min(end, off + totalLength);
  const ff = v.getUint16(off + 6);
  const proto = v.getUint8(off + 9);
  const p: Parsed = {
    src: ipStr(v.getUint32(off + 12)),
    dst: ipStr(v.getUint32(off + 16)),
    proto,
    ttl: v.getUint8(off + 8),
    ipId: v.getUint16(off + 4),
    tos: v.getUint8(off + 1),
    totalLength,
    ihl,
    df: (ff & 0x4000) !== 0,
    mf: (ff & 0x2000) !== 0,
    fragOffset: (ff & 0x1fff) * 8,
    ipChecksum: v.getUint16(off + 10),
    truncated: false,
    payload: new Uint8Array(0),
  };
  const l = off + ihl;
  const avail = stop - l;
  if (p.fragOffset !== 0) {
    p.payload = buf.slice(l, stop);
    return p;
  }
  if (proto === PROTO.tcp) {
    if (avail < 8) return truncatedOrThrow(p, where, "TCP", avail, embedded);
    p.sport = v.getUint16(l);
    p.dport = v.getUint16(l + 2);
    p.seq = v.getUint32(l + 4);
    if (avail < 20) return truncatedOrThrow(p, where, "TCP", avail, embedded);
    p.ack = v.getUint32(l + 8);
    const doff = (v.getUint8(l + 12) >>> 4) * 4;
    p.flags = v.getUint8(l + 13);
    p.window = v.getUint16(l + 14);
    p.l4Checksum = v.getUint16(l + 16);
    if (doff < 20) throw new Error(`${where}: TCP data offset ${doff} < 20`);
    if (doff > avail) return truncatedOrThrow(p, where, "TCP options", avail, embedded);
    p.payload = buf.slice(l + doff, stop);
  } else if (proto === PROTO.udp) {
    if (avail < 8) return truncatedOrThrow(p, where, "UDP", avail, embedded);
    p.sport = v.getUint16(l);
    p.dport = v.getUint16(l + 2);
    p.udpLength = v.getUint16(l + 4);
    p.l4Checksum = v.getUint16(l + 6);
    p.payload = buf.slice(l + 8, stop);
  } else if (proto === PROTO.icmp) {
    if (avail < 8) return truncatedOrThrow(p, where, "ICMP", avail, embedded);
    p.icmpType = v.getUint8(l);
    p.icmpCode = v.getUint8(l + 1);
    p.l4Checksum = v.getUint16(l + 2);
    if (icmpIsError(p.icmpType)) {
      p.icmpRest = v.getUint32(l + 4);
      // Errors inside errors are not parsed further (RFC 1812 §4.3.2.7: none are sent).
      if (!embedded) p.embedded = parseIp(buf, l + 8, stop, true);
      else p.payload = buf.slice(l + 8, stop);
    } else {
      p.icmpId = v.getUint16(l + 4);
      p.icmpSeq = v.getUint16(l + 6);
      p.payload = buf.slice(l + 8, stop);
    }
  } else {
    p.payload = buf.slice(l, stop);
  }
  return p;
}

function truncatedOrThrow(
  p: Parsed,
  where: string,
  what: string,
  avail: number,
  embedded: boolean,
): Parsed {
  if (!embedded) throw new Error(`${where}: ${avail} bytes is too short for the ${what} header`);
  p.truncated = true;
  return p;
}

/** The offending datagram an ICMP error carries: the first `keep` bytes of `pkt` (default 28). */
export function truncate(pkt: Uint8Array, keep = 28): Uint8Array {
  return pkt.slice(0, Math.min(keep, pkt.length));
}

/** mulberry32: a seeded PRNG returning uint32s, so randomized tests replay exactly. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (x ^ (x >>> 14)) >>> 0;
  };
}
