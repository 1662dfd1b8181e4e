/**
 * One flow on the wire of the HA sync (and the only place that knows its layout, so it can be
 * swapped for the state file's encoding when both agree): 28 bytes, big-endian.
 *
 *   0 op (OP_UPSERT, OP_DELETE)   1 proto   2 state   3 flags (FlowFlag REPLIED | INBOUND)
 *   4 inside addr   8 NAT addr (0 for a delete)   12 remote addr
 *   16 inside port  18 NAT port  20 remote port   22 reserved (0)
 *   24 seconds the flow has left to live on the sender (0 for a delete)
 *
 * Times are relative: the two machines' monotonic clocks have nothing in common.
 */
import { FlowFlag } from "../conntrack/table.js";

export const RECORD_BYTES = 28;
export const OP_UPSERT = 1;
const OP_DELETE = 2;

/** What the encoder reads a live flow from (a FlowTable). */
export interface FlowView {
  proto(f: number): number;
  state(f: number): number;
  flags(f: number): number;
  iaddr(f: number): number;
  oaddr(f: number): number;
  raddr(f: number): number;
  iport(f: number): number;
  oport(f: number): number;
  rport(f: number): number;
  expires(f: number): number;
}

/** A decoded record (reused by the decoder: one object per receiver, not per record). */
export interface FlowRecordFields {
  op: number;
  proto: number;
  state: number;
  flags: number;
  iaddr: number;
  oaddr: number;
  raddr: number;
  iport: number;
  oport: number;
  rport: number;
  remaining: number;
}

export function newRecord(): FlowRecordFields {
  return {
    op: 0,
    proto: 0,
    state: 0,
    flags: 0,
    iaddr: 0,
    oaddr: 0,
    raddr: 0,
    iport: 0,
    oport: 0,
    rport: 0,
    remaining: 0,
  };
}

/** Write live flow `f` as an upsert at `off`; returns the next offset. */
export function encodeUpsert(buf: Buffer, off: number, t: FlowView, f: number, now: number) {
  buf[off] = OP_UPSERT;
  buf[off + 1] = t.proto(f);
  buf[off + 2] = t.state(f);
  buf[off + 3] = t.flags(f) & (FlowFlag.REPLIED | FlowFlag.INBOUND);
  buf.writeUInt32BE(t.iaddr(f) >>> 0, off + 4);
  buf.writeUInt32BE(t.oaddr(f) >>> 0, off + 8);
  buf.writeUInt32BE(t.raddr(f) >>> 0, off + 12);
  buf.writeUInt16BE(t.iport(f), off + 16);
  buf.writeUInt16BE(t.oport(f), off + 18);
  buf.writeUInt16BE(t.rport(f), off + 20);
  buf.writeUInt16BE(0, off + 22);
  buf.writeUInt32BE(Math.max(0, t.expires(f) - now) >>> 0, off + 24);
  return off + RECORD_BYTES;
}

/** Write a removal of (proto, inside addr:port, remote addr:port) at `off`. */
export function encodeDelete(
  buf: Buffer,
  off: number,
  proto: number,
  iaddr: number,
  iport: number,
  raddr: number,
  rport: number,
): number {
  buf.fill(0, off, off + RECORD_BYTES);
  buf[off] = OP_DELETE;
  buf[off + 1] = proto;
  buf.writeUInt32BE(iaddr >>> 0, off + 4);
  buf.writeUInt32BE(raddr >>> 0, off + 12);
  buf.writeUInt16BE(iport, off + 16);
  buf.writeUInt16BE(rport, off + 20);
  return off + RECORD_BYTES;
}

/** Read the record at `off` into `r`; false when it is malformed (unknown op or protocol). */
export function decodeRecord(buf: Buffer, off: number, r: FlowRecordFields): boolean {
  if (off + RECORD_BYTES > buf.length) return false;
  r.op = buf[off] ?? 0;
  r.proto = buf[off + 1] ?? 0;
  r.state = buf[off + 2] ?? 0;
  r.flags = buf[off + 3] ?? 0;
  r.iaddr = buf.readUInt32BE(off + 4);
  r.oaddr = buf.readUInt32BE(off + 8);
  r.raddr = buf.readUInt32BE(off + 12);
  r.iport = buf.readUInt16BE(off + 16);
  r.oport = buf.readUInt16BE(off + 18);
  r.rport = buf.readUInt16BE(off + 20);
  r.remaining = buf.readUInt32BE(off + 24);
  if (r.op !== OP_UPSERT && r.op !== OP_DELETE) return false;
  if (r.proto !== 1 && r.proto !== 6 && r.proto !== 17) return false;
  // TCP states 0..8 (tcp-state.ts); UDP and ICMP: 0, or 1 once replied.
  if (r.op === OP_UPSERT && r.state > (r.proto === 6 ? 8 : 1)) return false;
  return true;
}
