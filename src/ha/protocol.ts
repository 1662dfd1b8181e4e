/**
 * The HA sync's datagrams (UDP, one message per datagram, at most MAX_DATAGRAM bytes so that no
 * message is fragmented on a 1500-byte path), each authenticated with HMAC-SHA256 over the whole
 * datagram under the pair's shared key. A datagram that is short, has another magic or version,
 * or whose MAC does not verify is dropped and counted; nothing in it is looked at before the MAC
 * has been checked.
 *
 * Header, 32 bytes, big-endian:
 *   0 magic "TNHA"   4 version (1)   5 type (MsgType)   6 flags (MsgFlag)   7 sender role (Role)
 *   8 sender epoch (a random number drawn at each start: a restarted peer is a new stream)
 *   12 seq (DATA: its sequence number in the sender's stream)
 *   16 ack (the highest DATA seq received in order from the peer's stream `ackEpoch`)
 *   20 ackEpoch   24 record count (DATA)   26 priority   27 synced (1: the sender's table follows
 *   the peer's stream completely)   28 arg (NACK: the last missing seq)
 * then `count` flow records (FLOW_RECORD_BYTES each, conntrack/snapshot.ts: the state file's
 * record), then the 32-byte MAC. Version 2: the 64-byte record (version 1 had a 28-byte one).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { FLOW_RECORD_BYTES } from "../conntrack/snapshot.js";

const MAGIC = 0x544e4841; // "TNHA"
const VERSION = 2;
export const HEADER_BYTES = 32;
export const MAC_BYTES = 32;
/** A datagram's largest size: fits a 1500-byte MTU with the IPv4 and UDP headers and room. */
export const MAX_DATAGRAM = 1400;
/** Flow records per DATA message. */
export const RECORDS_PER_MESSAGE = Math.floor(
  (MAX_DATAGRAM - HEADER_BYTES - MAC_BYTES) / FLOW_RECORD_BYTES,
);
/** The shortest key accepted (bytes): 256 bits, HMAC-SHA256's block security. */
export const MIN_KEY_BYTES = 32;

export const MsgType = {
  HEARTBEAT: 1,
  DATA: 2,
  ACK: 3,
  NACK: 4,
  RESYNC_REQUEST: 5,
} as const;

export const MsgFlag = {
  /** The first message of a bulk resync: the receiver starts a new copy of the table. */
  BULK_BEGIN: 0x01,
  /** The last message of a bulk resync: flows the bulk did not mention are stale. */
  BULK_END: 0x02,
} as const;

export const Role = { STANDBY: 0, ACTIVE: 1 } as const;
export type Role = (typeof Role)[keyof typeof Role];

export interface Header {
  type: number;
  flags: number;
  role: number;
  epoch: number;
  seq: number;
  ack: number;
  ackEpoch: number;
  count: number;
  priority: number;
  synced: number;
  arg: number;
}

export function newHeader(): Header {
  return {
    type: 0,
    flags: 0,
    role: 0,
    epoch: 0,
    seq: 0,
    ack: 0,
    ackEpoch: 0,
    count: 0,
    priority: 0,
    synced: 0,
    arg: 0,
  };
}

export function writeHeader(buf: Buffer, h: Header): void {
  buf.writeUInt32BE(MAGIC, 0);
  buf[4] = VERSION;
  buf[5] = h.type;
  buf[6] = h.flags;
  buf[7] = h.role;
  buf.writeUInt32BE(h.epoch >>> 0, 8);
  buf.writeUInt32BE(h.seq >>> 0, 12);
  buf.writeUInt32BE(h.ack >>> 0, 16);
  buf.writeUInt32BE(h.ackEpoch >>> 0, 20);
  buf.writeUInt16BE(h.count, 24);
  buf[26] = h.priority;
  buf[27] = h.synced;
  buf.writeUInt32BE(h.arg >>> 0, 28);
}

/** Why a datagram was refused (the receiver counts each). */
export type RejectReason = "short" | "magic" | "version" | "mac" | "length";

export class Authenticator {
  constructor(private readonly key: Buffer) {
    if (key.length < MIN_KEY_BYTES) throw new RangeError(`key shorter than ${MIN_KEY_BYTES} bytes`);
  }

  /** MAC bytes [0, len) of `buf` into [len, len + 32); returns the datagram's length. */
  seal(buf: Buffer, len: number): number {
    const mac = createHmac("sha256", this.key).update(buf.subarray(0, len)).digest();
    mac.copy(buf, len);
    return len + MAC_BYTES;
  }

  /** Verify and parse a datagram's header into `h`; returns null or why it was refused. */
  open(msg: Buffer, h: Header): RejectReason | null {
    if (msg.length < HEADER_BYTES + MAC_BYTES) return "short";
    const body = msg.length - MAC_BYTES;
    const mac = createHmac("sha256", this.key).update(msg.subarray(0, body)).digest();
    if (!timingSafeEqual(mac, msg.subarray(body))) return "mac";
    if (msg.readUInt32BE(0) !== MAGIC) return "magic";
    if (msg[4] !== VERSION) return "version";
    h.type = msg[5] ?? 0;
    h.flags = msg[6] ?? 0;
    h.role = msg[7] ?? 0;
    h.epoch = msg.readUInt32BE(8);
    h.seq = msg.readUInt32BE(12);
    h.ack = msg.readUInt32BE(16);
    h.ackEpoch = msg.readUInt32BE(20);
    h.count = msg.readUInt16BE(24);
    h.priority = msg[26] ?? 0;
    h.synced = msg[27] ?? 0;
    h.arg = msg.readUInt32BE(28);
    if (HEADER_BYTES + h.count * FLOW_RECORD_BYTES !== body) return "length";
    return null;
  }
}
