/** TCP header (RFC 9293 §3.1) over (buf, off) where off is the start of the TCP header. */
import { readU16, readU32, writeU16, writeU32 } from "./ipv4.js";

const SRC_PORT = 0;
const DST_PORT = 2;
const SEQ_NUM = 4;
const ACK_NUM = 8;
export const DATA_OFF = 12;
export const FLAGS = 13;
export const WINDOW = 14;
export const CHECKSUM = 16;
export const URGENT = 18;
export const MIN_HEADER_LEN = 20;

export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;
export const URG = 0x20;

export const ERR_TOO_SHORT = -1;
export const ERR_DATA_OFF = -2;

/** Validate a TCP header of a segment of `len` bytes. Returns its header length or a sentinel. */
export function check(buf: Uint8Array, off: number, len: number): number {
  if (len < MIN_HEADER_LEN) return ERR_TOO_SHORT;
  const hl = (buf[off + DATA_OFF]! >>> 4) << 2;
  if (hl < MIN_HEADER_LEN || hl > len) return ERR_DATA_OFF;
  return hl;
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
export function seq(buf: Uint8Array, off: number): number {
  return readU32(buf, off + SEQ_NUM);
}
export function ack(buf: Uint8Array, off: number): number {
  return readU32(buf, off + ACK_NUM);
}
export function setSeq(buf: Uint8Array, off: number, v: number): void {
  writeU32(buf, off + SEQ_NUM, v);
}
export function setAck(buf: Uint8Array, off: number, v: number): void {
  writeU32(buf, off + ACK_NUM, v);
}
export function headerLength(buf: Uint8Array, off: number): number {
  return (buf[off + DATA_OFF]! >>> 4) << 2;
}
export function flags(buf: Uint8Array, off: number): number {
  return buf[off + FLAGS]!;
}
export function checksumField(buf: Uint8Array, off: number): number {
  return readU16(buf, off + CHECKSUM);
}
export function setChecksumField(buf: Uint8Array, off: number, v: number): void {
  writeU16(buf, off + CHECKSUM, v);
}
