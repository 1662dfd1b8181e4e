/**
 * IPv4 header (RFC 791) over (buf, off). Addresses are host-order uint32 numbers.
 */
import { adjust, delta16, delta32 } from "./checksum.js";

export const VER_IHL = 0;
const TOS = 1;
const TOTAL_LEN = 2;
export const ID = 4;
const FLAGS_FRAG = 6;
const TTL = 8;
export const PROTOCOL = 9;
const CHECKSUM = 10;
export const SRC = 12;
export const DST = 16;
export const MIN_HEADER_LEN = 20;
export const MAX_HEADER_LEN = 60;

const FLAG_DF = 0x4000;
export const FLAG_MF = 0x2000;
export const FRAG_OFFSET_MASK = 0x1fff;

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;

/** Sentinels returned by `check`. */
export const ERR_TOO_SHORT = -1;
export const ERR_VERSION = -2;
export const ERR_IHL = -3;
export const ERR_TOTAL_LEN = -4;

/**
 * Validate the header of a packet of `len` bytes at `off`. Returns the header length in bytes, or a
 * negative ERR_* sentinel. Afterwards fields inside the header and `totalLength()` bytes are safe.
 * The header checksum is not verified: the kernel did that before forwarding to us.
 */
export function check(buf: Uint8Array, off: number, len: number): number {
  if (len < MIN_HEADER_LEN) return ERR_TOO_SHORT;
  const vi = buf[off + VER_IHL]!;
  if (vi >>> 4 !== 4) return ERR_VERSION;
  const hl = (vi & 0x0f) << 2;
  if (hl < MIN_HEADER_LEN || hl > len) return ERR_IHL;
  const tl = totalLength(buf, off);
  if (tl < hl || tl > len) return ERR_TOTAL_LEN;
  return hl;
}

export function headerLength(buf: Uint8Array, off: number): number {
  return (buf[off + VER_IHL]! & 0x0f) << 2;
}
export function totalLength(buf: Uint8Array, off: number): number {
  return (buf[off + TOTAL_LEN]! << 8) | buf[off + TOTAL_LEN + 1]!;
}
export function setTotalLength(buf: Uint8Array, off: number, v: number): void {
  buf[off + TOTAL_LEN] = v >>> 8;
  buf[off + TOTAL_LEN + 1] = v & 0xff;
}
export function id(buf: Uint8Array, off: number): number {
  return (buf[off + ID]! << 8) | buf[off + ID + 1]!;
}
export function flagsFrag(buf: Uint8Array, off: number): number {
  return (buf[off + FLAGS_FRAG]! << 8) | buf[off + FLAGS_FRAG + 1]!;
}
/** Fragment offset in bytes. */
export function fragOffset(buf: Uint8Array, off: number): number {
  return (flagsFrag(buf, off) & FRAG_OFFSET_MASK) << 3;
}
export function moreFragments(buf: Uint8Array, off: number): boolean {
  return (buf[off + FLAGS_FRAG]! & 0x20) !== 0;
}
export function dontFragment(buf: Uint8Array, off: number): boolean {
  return (buf[off + FLAGS_FRAG]! & 0x40) !== 0;
}
/** True for any fragment (first, middle or last). */
export function isFragment(buf: Uint8Array, off: number): boolean {
  return (flagsFrag(buf, off) & (FLAG_MF | FRAG_OFFSET_MASK)) !== 0;
}
export function ttl(buf: Uint8Array, off: number): number {
  return buf[off + TTL]!;
}
export function protocol(buf: Uint8Array, off: number): number {
  return buf[off + PROTOCOL]!;
}
export function checksumField(buf: Uint8Array, off: number): number {
  return (buf[off + CHECKSUM]! << 8) | buf[off + CHECKSUM + 1]!;
}
export function setChecksumField(buf: Uint8Array, off: number, v: number): void {
  buf[off + CHECKSUM] = v >>> 8;
  buf[off + CHECKSUM + 1] = v & 0xff;
}
export function src(buf: Uint8Array, off: number): number {
  return readU32(buf, off + SRC);
}
export function dst(buf: Uint8Array, off: number): number {
  return readU32(buf, off + DST);
}

export function readU32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}
export function writeU32(buf: Uint8Array, at: number, v: number): void {
  buf[at] = v >>> 24;
  buf[at + 1] = (v >>> 16) & 0xff;
  buf[at + 2] = (v >>> 8) & 0xff;
  buf[at + 3] = v & 0xff;
}
export function readU16(buf: Uint8Array, at: number): number {
  return (buf[at]! << 8) | buf[at + 1]!;
}
export function writeU16(buf: Uint8Array, at: number, v: number): void {
  buf[at] = v >>> 8;
  buf[at + 1] = v & 0xff;
}

/** Write a new source address and fix the header checksum incrementally. Returns the RFC 1624 delta. */
export function rewriteSrc(buf: Uint8Array, off: number, addr: number): number {
  const d = delta32(src(buf, off), addr);
  writeU32(buf, off + SRC, addr);
  setChecksumField(buf, off, adjust(checksumField(buf, off), d));
  return d;
}
/** Write a new destination address and fix the header checksum incrementally. Returns the delta. */
export function rewriteDst(buf: Uint8Array, off: number, addr: number): number {
  const d = delta32(dst(buf, off), addr);
  writeU32(buf, off + DST, addr);
  setChecksumField(buf, off, adjust(checksumField(buf, off), d));
  return d;
}
/** Set the TTL, fixing the header checksum (TTL shares a 16-bit word with the protocol). */
export function setTtl(buf: Uint8Array, off: number, v: number): void {
  const proto = buf[off + PROTOCOL]!;
  const oldWord = (buf[off + TTL]! << 8) | proto;
  buf[off + TTL] = v;
  setChecksumField(buf, off, adjust(checksumField(buf, off), delta16(oldWord, (v << 8) | proto)));
}

/** Build a fresh 20-byte header (no options) with a computed checksum. */
export function writeHeader(
  buf: Uint8Array,
  off: number,
  totalLen: number,
  ident: number,
  df: boolean,
  ttlv: number,
  proto: number,
  s: number,
  d: number,
  tos = 0,
): void {
  buf[off + VER_IHL] = 0x45;
  buf[off + TOS] = tos;
  setTotalLength(buf, off, totalLen);
  writeU16(buf, off + ID, ident);
  writeU16(buf, off + FLAGS_FRAG, df ? FLAG_DF : 0);
  buf[off + TTL] = ttlv;
  buf[off + PROTOCOL] = proto;
  writeU16(buf, off + CHECKSUM, 0);
  writeU32(buf, off + SRC, s);
  writeU32(buf, off + DST, d);
  let acc = 0;
  for (let i = 0; i < MIN_HEADER_LEN; i += 2) acc += (buf[off + i]! << 8) | buf[off + i + 1]!;
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  setChecksumField(buf, off, acc ^ 0xffff);
}
