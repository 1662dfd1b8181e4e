/** ICMPv4 (RFC 792) over (buf, off) where off is the start of the ICMP header. */
import { readU16, writeU16 } from "./ipv4.js";

export const TYPE = 0;
export const CODE = 1;
export const CHECKSUM = 2;
/** Echo identifier and sequence (types 0 and 8). */
export const ID = 4;
export const SEQ = 6;
/** Next-hop MTU of a fragmentation-needed error (RFC 1191 §4). */
export const NEXT_HOP_MTU = 6;
/** Pointer of a parameter-problem error. */
export const POINTER = 4;
/** Length of the ICMP header; errors carry the offending datagram from here (RFC 792). */
export const HEADER_LEN = 8;

export const ECHO_REPLY = 0;
export const DEST_UNREACH = 3;
export const SOURCE_QUENCH = 4;
export const REDIRECT = 5;
export const ECHO_REQUEST = 8;
export const TIME_EXCEEDED = 11;
export const PARAM_PROBLEM = 12;

export const CODE_PORT_UNREACH = 3;
export const CODE_FRAG_NEEDED = 4;
/** Communication administratively prohibited (RFC 1812 §5.2.7.1). */
export const CODE_ADMIN_PROHIBITED = 13;

export const ERR_TOO_SHORT = -1;

export function check(_buf: Uint8Array, _off: number, len: number): number {
  return len < HEADER_LEN ? ERR_TOO_SHORT : HEADER_LEN;
}

export function type(buf: Uint8Array, off: number): number {
  return buf[off + TYPE]!;
}
export function code(buf: Uint8Array, off: number): number {
  return buf[off + CODE]!;
}
export function isEcho(t: number): boolean {
  return t === ECHO_REQUEST || t === ECHO_REPLY;
}
/** Error messages that embed the offending datagram and that a NAT translates (RFC 5508 §4). */
export function isError(t: number): boolean {
  return t === DEST_UNREACH || t === TIME_EXCEEDED || t === PARAM_PROBLEM;
}
export function id(buf: Uint8Array, off: number): number {
  return readU16(buf, off + ID);
}
export function setId(buf: Uint8Array, off: number, v: number): void {
  writeU16(buf, off + ID, v);
}
export function checksumField(buf: Uint8Array, off: number): number {
  return readU16(buf, off + CHECKSUM);
}
export function setChecksumField(buf: Uint8Array, off: number, v: number): void {
  writeU16(buf, off + CHECKSUM, v);
}
