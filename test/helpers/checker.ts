/**
 * test/helpers/checker.ts — full-recomputation checksum checks and field assertions for tests
 * (after gVisor's `checker` package). Independent of src/wire: it recomputes every checksum from
 * the bytes with test/helpers/packet.ts's plain RFC 1071 loop, so a test that runs the translator
 * and then `checksumsOk()` cross-checks the incremental (RFC 1624) code path.
 */
import {
  hasVnet,
  internetChecksum,
  onesSum,
  type Parsed,
  PROTO,
  parse,
  pseudoSum,
  readVnet,
  VNET_LEN,
  VNET_NEEDS_CSUM,
  type VnetSpec,
} from "./packet.js";

export interface CheckResult {
  ok: boolean;
  why?: string;
}

export interface CheckOptions {
  /** Whether a virtio_net_hdr precedes the IP header. Default: detected from the bytes. */
  vnet?: boolean;
  /** Accept a UDP checksum of 0 ("none", RFC 768). Default true. */
  allowUdpZero?: boolean;
}

const hx = (n: number) => `0x${n.toString(16).padStart(4, "0")}`;

/** The checksum of bytes [start, end) computed as if the 16-bit field at `field` were zero. */
function recompute(
  buf: Uint8Array,
  start: number,
  end: number,
  field: number,
  initial = 0,
): number {
  const copy = buf.slice(start, end);
  copy[field - start] = 0;
  copy[field - start + 1] = 0;
  return internetChecksum(copy, 0, copy.length, initial);
}

const u16 = (buf: Uint8Array, at: number) => buf[at] * 256 + buf[at + 1];
const u32 = (buf: Uint8Array, at: number) => u16(buf, at) * 65536 + u16(buf, at + 2);

/**
 * Recompute every checksum of the IPv4 packet at `off` and compare it with the field:
 * the IP header; TCP/UDP with the pseudo-header (UDP 0 = none is accepted); ICMP over the whole
 * message; for ICMP errors also the embedded IP header (not the embedded L4 checksum, which the
 * truncation may have cut). Fragments get only the IP header checked (no reassembly here).
 *
 * With a virtio_net_hdr whose flags have NEEDS_CSUM, the L4 field must instead hold the folded
 * pseudo-header sum (CHECKSUM_PARTIAL) and csum_start/csum_offset must point at that field.
 *
 * Comparisons are exact: 0x0000 and 0xffff are not treated as the same checksum, since both a
 * full computation and RFC 1624 eqn. 3 produce the same representative.
 */
export function checksumsOk(buf: Uint8Array, off = 0, opts: CheckOptions = {}): CheckResult {
  const withVnet = opts.vnet ?? hasVnet(buf, off);
  let needsCsum = false;
  let vh: Required<VnetSpec> | undefined;
  if (withVnet) {
    if (buf.length < off + VNET_LEN) return { ok: false, why: "shorter than a virtio_net_hdr" };
    vh = readVnet(buf, off);
    needsCsum = (vh.flags & VNET_NEEDS_CSUM) !== 0;
    off += VNET_LEN;
  }
  if (buf.length - off < 20) return { ok: false, why: `${buf.length - off} bytes: no IPv4 header` };
  if (buf[off] >>> 4 !== 4) return { ok: false, why: `IP version ${buf[off] >>> 4}` };
  const ihl = (buf[off] & 0x0f) * 4;
  const total = u16(buf, off + 2);
  if (ihl < 20 || total < ihl || off + total > buf.length) {
    return {
      ok: false,
      why: `impossible lengths: IHL ${ihl}, total ${total}, ${buf.length - off} bytes`,
    };
  }
  const ipField = u16(buf, off + 10);
  const ipWant = recompute(buf, off, off + ihl, off + 10);
  if (ipField !== ipWant) {
    return { ok: false, why: `IP header checksum ${hx(ipField)}, expected ${hx(ipWant)}` };
  }
  const ff = u16(buf, off + 6);
  if ((ff & 0x3fff) !== 0) return { ok: true }; // a fragment: the L4 checksum spans the datagram

  const proto = buf[off + 9];
  const l = off + ihl;
  const end = off + total;
  const l4len = total - ihl;
  const src = u32(buf, off + 12);
  const dst = u32(buf, off + 16);

  if (proto === PROTO.tcp || proto === PROTO.udp) {
    const name = proto === PROTO.tcp ? "TCP" : "UDP";
    const fieldAt = proto === PROTO.tcp ? 16 : 6;
    if (l4len < fieldAt + 2) return { ok: false, why: `${name} segment of ${l4len} bytes` };
    const field = u16(buf, l + fieldAt);
    const ps = pseudoSum(src, dst, proto, l4len);
    if (needsCsum && vh) {
      if (vh.csumStart !== ihl || vh.csumOffset !== fieldAt) {
        return {
          ok: false,
          why: `NEEDS_CSUM with csum_start ${vh.csumStart}/csum_offset ${vh.csumOffset}, expected ${ihl}/${fieldAt}`,
        };
      }
      if (field !== ps) {
        return {
          ok: false,
          why: `${name} partial checksum ${hx(field)}, expected pseudo-header sum ${hx(ps)}`,
        };
      }
      return { ok: true };
    }
    if (proto === PROTO.udp && field === 0) {
      return opts.allowUdpZero === false
        ? { ok: false, why: "UDP checksum 0 (none) where one was required" }
        : { ok: true };
    }
    let want = recompute(buf, l, end, l + fieldAt, ps);
    if (proto === PROTO.udp && want === 0) want = 0xffff; // RFC 768
    if (field !== want)
      return { ok: false, why: `${name} checksum ${hx(field)}, expected ${hx(want)}` };
    return { ok: true };
  }

  if (proto === PROTO.icmp) {
    if (l4len < 8) return { ok: false, why: `ICMP message of ${l4len} bytes` };
    const field = u16(buf, l + 2);
    if (needsCsum && vh) {
      // No pseudo-header: the device completes the sum from csum_start with the field as seed.
      const completed = 0xffff - onesSum(buf, off + vh.csumStart, end);
      const want = recompute(buf, l, end, l + 2);
      if (vh.csumStart + vh.csumOffset !== ihl + 2 || completed !== want) {
        return {
          ok: false,
          why: `ICMP partial checksum ${hx(field)} does not complete to ${hx(want)}`,
        };
      }
    } else {
      const want = recompute(buf, l, end, l + 2);
      if (field !== want)
        return { ok: false, why: `ICMP checksum ${hx(field)}, expected ${hx(want)}` };
    }
    const type = buf[l];
    if (type === 3 || type === 4 || type === 5 || type === 11 || type === 12) {
      const e = l + 8;
      if (end - e < 20) return { ok: false, why: `ICMP error embeds only ${end - e} bytes` };
      const eihl = (buf[e] & 0x0f) * 4;
      if (buf[e] >>> 4 !== 4 || eihl < 20 || e + eihl > end) {
        return { ok: false, why: `embedded IP header unusable (first byte ${hx(buf[e])})` };
      }
      const efield = u16(buf, e + 10);
      const ewant = recompute(buf, e, e + eihl, e + 10);
      if (efield !== ewant) {
        return {
          ok: false,
          why: `embedded IP header checksum ${hx(efield)}, expected ${hx(ewant)}`,
        };
      }
    }
    return { ok: true };
  }
  return { ok: true };
}

/** The subset of a tap Test that the helpers use. */
export interface Asserter {
  equal(found: unknown, wanted: unknown, message: string): boolean;
  ok(found: unknown, message: string): boolean;
  fail(message: string): boolean;
}

/** Expected fields; anything left out is not checked. */
export interface Want {
  src?: string;
  dst?: string;
  proto?: "tcp" | "udp" | "icmp" | number;
  sport?: number;
  dport?: number;
  flags?: number;
  seq?: number;
  ack?: number;
  ttl?: number;
  ipId?: number;
  df?: boolean;
  totalLength?: number;
  udpLength?: number;
  l4Checksum?: number;
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  icmpSeq?: number;
  icmpRest?: number;
  payload?: Uint8Array | string;
  embedded?: Want;
  vnet?: Partial<VnetSpec>;
  /** Check every checksum by full recomputation (default true). */
  checksums?: boolean;
}

const TCP_FLAG_NAMES: [number, string][] = [
  [0x01, "FIN"],
  [0x02, "SYN"],
  [0x04, "RST"],
  [0x08, "PSH"],
  [0x10, "ACK"],
  [0x20, "URG"],
];

/** "SYN|ACK" for 0x12, for messages. */
export function flagNames(f: number): string {
  const names = TCP_FLAG_NAMES.filter(([b]) => (f & b) !== 0).map(([, n]) => n);
  return names.length > 0 ? names.join("|") : "none";
}

function protoOf(p: Want["proto"]): number | undefined {
  if (p === undefined || typeof p === "number") return p;
  return PROTO[p];
}

function checkFields(t: Asserter, got: Parsed, want: Want, label: string): void {
  const scalar: (keyof Want & keyof Parsed)[] = [
    "src",
    "dst",
    "sport",
    "dport",
    "seq",
    "ack",
    "ttl",
    "ipId",
    "df",
    "totalLength",
    "udpLength",
    "l4Checksum",
    "icmpType",
    "icmpCode",
    "icmpId",
    "icmpSeq",
    "icmpRest",
  ];
  const p = protoOf(want.proto);
  if (p !== undefined) t.equal(got.proto, p, `${label}protocol is ${want.proto}`);
  for (const k of scalar) {
    const w = want[k];
    if (w !== undefined) t.equal(got[k], w, `${label}${k} is ${String(w)}`);
  }
  if (want.flags !== undefined) {
    t.equal(
      got.flags === undefined ? "absent" : flagNames(got.flags),
      flagNames(want.flags),
      `${label}TCP flags are ${flagNames(want.flags)}`,
    );
  }
  if (want.payload !== undefined) {
    const w =
      typeof want.payload === "string" ? new TextEncoder().encode(want.payload) : want.payload;
    t.equal(
      Buffer.from(got.payload).toString("hex"),
      Buffer.from(w).toString("hex"),
      `${label}payload`,
    );
  }
  if (want.vnet !== undefined) {
    if (!got.vnet) t.fail(`${label}has a virtio_net_hdr`);
    else {
      for (const [k, w] of Object.entries(want.vnet)) {
        t.equal(got.vnet[k as keyof VnetSpec], w, `${label}vnet ${k} is ${String(w)}`);
      }
    }
  }
  if (want.embedded !== undefined) {
    if (!got.embedded) t.fail(`${label}carries an embedded datagram`);
    else checkFields(t, got.embedded, want.embedded, `${label}embedded `);
  }
}

/**
 * Assert that `buf` (an IPv4 packet, optionally behind a virtio_net_hdr) has the wanted fields
 * and, unless `checksums: false`, correct checksums. Returns the parse, or undefined when the
 * packet does not parse (which is reported as a failure).
 */
export function expectPacket(
  t: Asserter,
  buf: Uint8Array,
  want: Want,
  off = 0,
): Parsed | undefined {
  let got: Parsed;
  try {
    got = parse(buf, off);
  } catch (err) {
    t.fail(`packet parses (${(err as Error).message})`);
    return undefined;
  }
  checkFields(t, got, want, "");
  if (want.checksums !== false) {
    const r = checksumsOk(buf, off);
    t.ok(r.ok, r.ok ? "checksums are correct" : `checksums are correct: ${r.why}`);
  }
  return got;
}
