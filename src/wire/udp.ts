/** UDP header (RFC 768) over (buf, off) where off is the start of the UDP header. */
import { readU16, writeU16 } from "./ipv4.js";

export const SRC_PORT = 0;
export const DST_PORT = 2;
export const LENGTH = 4;
export const CHECKSUM = 6;
const HEADER_LEN = 8;

export const ERR_TOO_SHORT = -1;
export const ERR_LENGTH = -2;

/**
 * Validate a UDP header in `len` bytes of IP payload. Returns the UDP length field or a sentinel.
 * A length field larger than the payload is impossible; a smaller one is allowed (trailing bytes).
 * For GSO super-packets (UDP_L4) callers pass `gso`: the field is not a per-datagram length there.
 */
export function check(buf: Uint8Array, off: number, len: number, gso = false): number {
  if (len < HEADER_LEN) return ERR_TOO_SHORT;
  const ul = readU16(buf, off + LENGTH);
  if (!gso && (ul < HEADER_LEN || ul > len)) return ERR_LENGTH;
  return ul;
}

export function srcPort(buf: Uint8Array, off: number): number {
  return readU16(buf, off + SRC_PORT);
}
export function dstPort(buf: Uint8Array, off: number): number {
  return readU16(buf, off + DST_PORT);
}
export function setSrcPort(buf: Uint8Array, off: number, p: number): void {
  writeU16(buf, off + SRC_PORT, p);
}
export function setDstPort(buf: Uint8Array, off: number, p: number): void {
  writeU16(buf, off + DST_PORT, p);
}
export function length(buf: Uint8Array, off: number): number {
  return readU16(buf, off + LENGTH);
}
export function checksumField(buf: Uint8Array, off: number): number {
  return readU16(buf, off + CHECKSUM);
}
export function setChecksumField(buf: Uint8Array, off: number, v: number): void {
  writeU16(buf, off + CHECKSUM, v);
}
