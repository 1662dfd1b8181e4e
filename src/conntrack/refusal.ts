/**
 * Why the table refused to make a flow. createOutbound and createInbound return -(1 + Refusal)
 * and count nothing of it as a drop: nat/ maps each to its DropReason and counts it.
 */
export const Refusal = {
  /** The table is full and nothing could be evicted. */
  TableFull: 0,
  /** No outside port (or echo id) was free for a new mapping. */
  PortExhausted: 1,
  /** The inside host already holds its quota of mappings (RFC 6888 REQ-4). */
  QuotaExceeded: 2,
  /** Inbound with no mapping at all. */
  Unsolicited: 3,
  /** Inbound to an existing mapping, refused by the filtering policy (RFC 4787 REQ-8). */
  Filtered: 4,
} as const;
export type Refusal = (typeof Refusal)[keyof typeof Refusal];
