/**
 * The layout of a flow record: 8 uint32 words per flow in FlowTable.rec, and 24 bytes of
 * counters per flow in FlowTable.ctr/pkt. Shared by the table and its hash indexes.
 */
/** Bits of FlowTable.flags. */
export const FlowFlag = {
  /** Saw a packet in the reply direction (inbound for a flow opened from inside). Never evicted. */
  REPLIED: 0x01,
  /** Opened by an inbound packet on an existing mapping (EIF/ADF). */
  INBOUND: 0x02,
  /** Free for translate.ts. */
  USER: 0x04,
} as const;

/**
 * The flags word of a record holds the FlowFlag bits (0-4) and, above them, the link to the next
 * flow of the eviction list (id + 1, 0 for none): 27 bits, which bounds the capacity.
 */
export const FLAG_BITS = 0x1f;
export const LINK_SHIFT = 5;
export const MAX_CAPACITY = 1 << 26;

/** Words per flow record and their meaning (see FlowTable.rec). */
export const REC = 8;
export const R_IADDR = 0;
export const R_OADDR = 1;
export const R_RADDR = 2;
export const R_RPORT_PROTO_STATE = 3;
export const R_PORTS = 4;
export const R_EXPIRES = 5;
export const R_DELTAS = 6;
export const R_FLAGS = 7;
/**
 * Counters: 24 bytes per flow in one buffer, seen as float64 (bytes out, bytes in) and as uint32
 * (packets out, packets in), so a packet's counter update touches one place.
 */
export const CTR_BYTES = 24;
export const CTR_F64 = CTR_BYTES / 8;
export const CTR_U32 = CTR_BYTES / 4;
