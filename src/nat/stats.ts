/**
 * Counters the core bumps on the packet path. They are plain numbers (one typed-array slot per
 * drop reason), never prom-client objects; control/metrics.ts reads them at scrape time. The
 * connection table's own counters are ConntrackStats (conntrack/stats.ts), which NatStats extends
 * so that one object holds every counter of the core.
 */
import { ConntrackStats } from "../conntrack/stats.js";

/**
 * Why a packet was dropped: the one list. A reason's position is its DropReason value (the index
 * into NatStats.drops), `label` its metric label value, `help` what it means (docs/observability.md
 * lists the same labels; a unit test holds them together).
 */
export const DROP_REASONS = [
  {
    id: "MalformedIp",
    label: "malformed_ip",
    help: "Shorter than its own headers claim, wrong version, bad IHL or total length.",
  },
  {
    id: "MalformedL4",
    label: "malformed_l4",
    help: "Transport header truncated or impossible (TCP data offset < 5, UDP length wrong).",
  },
  {
    id: "BadVnetHdr",
    label: "bad_vnet_hdr",
    help: "virtio_net_hdr missing, or a GSO type the core cannot rewrite.",
  },
  {
    id: "UnsupportedProtocol",
    label: "unsupported_protocol",
    help: "IPv4 protocol other than TCP, UDP or ICMP.",
  },
  {
    id: "NotNatTraffic",
    label: "not_nat_traffic",
    help: "Neither from an inside prefix nor to a NAT address: not ours to translate.",
  },
  {
    id: "Unsolicited",
    label: "unsolicited",
    help: "Inbound with no mapping at all (unsolicited; never answered, RFC 5382 REQ-4).",
  },
  {
    id: "Filtered",
    label: "filtered",
    help: "Inbound to an existing mapping, refused by the filtering policy (RFC 4787 REQ-8).",
  },
  {
    id: "IcmpUnsupported",
    label: "icmp_unsupported",
    help: "ICMP type that is neither echo nor a translatable error (RFC 5508 REQ-11).",
  },
  {
    id: "IcmpErrorNoFlow",
    label: "icmp_error_no_flow",
    help: "ICMP error whose embedded packet matches no flow (RFC 5508 REQ-4).",
  },
  {
    id: "IcmpBadChecksum",
    label: "icmp_bad_checksum",
    help: "ICMP message with a wrong checksum (RFC 5508 REQ-3).",
  },
  {
    id: "IcmpErrorBadEmbedded",
    label: "icmp_error_bad_embedded",
    help: "ICMP error whose embedded IP header is truncated or has a wrong checksum (RFC 5508 REQ-3a).",
  },
  {
    id: "TableFull",
    label: "table_full",
    help: "The connection table is full and nothing could be evicted.",
  },
  {
    id: "PortExhausted",
    label: "port_exhausted",
    help: "No outside port (or echo id) was free for a new mapping.",
  },
  {
    id: "QuotaExceeded",
    label: "quota_exceeded",
    help: "The inside host already holds its quota of mappings (RFC 6888 REQ-4).",
  },
  {
    id: "FragmentNoState",
    label: "fragment_no_state",
    help: "A non-first fragment had no state from its first fragment: it was held (RFC 4787 REQ-14) and its first fragment did not come in time, or it could not be translated when it did.",
  },
  {
    id: "TcpNoFlow",
    label: "tcp_no_flow",
    help: "A TCP segment that matches no flow and may not open one: an RST, a FIN, or a segment without ACK and without SYN (see Translator.outbound: only a SYN opens, only a bare ACK is picked up).",
  },
  {
    id: "Spoofed",
    label: "spoofed",
    help: "Source is a NAT address (towards a NAT address), or the network or broadcast address of an inside prefix: never translated, never given a flow or a per-host series.",
  },
  {
    id: "FragmentStashFull",
    label: "fragment_stash_full",
    help: "An out-of-order fragment could not be held: the fragment stash's bounds were reached.",
  },
  {
    id: "TcpSynAckNoFlow",
    label: "tcp_syn_ack_no_flow",
    help: "An inside host's SYN-ACK that matches no flow. It answers a SYN that did not come through the NAT (a route around it, or a flow the table lost), so it never creates a mapping: a rising count means something reaches inside hosts by another way.",
  },
] as const;

export type DropReasonId = (typeof DROP_REASONS)[number]["id"];

/** DropReason.X is the index of reason X in DROP_REASONS. */
export const DropReason = Object.freeze(
  Object.fromEntries(DROP_REASONS.map((r, i) => [r.id, i])) as Record<DropReasonId, number>,
);
export type DropReason = number;

/** Metric label for each reason, indexed by DropReason value. */
export const DROP_REASON_NAMES: readonly string[] = DROP_REASONS.map((r) => r.label);

export class NatStats extends ConntrackStats {
  // The four directions of the AWS NAT Gateway metric set.
  /** From inside hosts into the gateway. */
  packetsInFromSource = 0;
  bytesInFromSource = 0;
  /** From the gateway to internet destinations. */
  packetsOutToDestination = 0;
  bytesOutToDestination = 0;
  /** From internet destinations into the gateway. */
  packetsInFromDestination = 0;
  bytesInFromDestination = 0;
  /** From the gateway back to inside hosts. */
  packetsOutToSource = 0;
  bytesOutToSource = 0;

  /** Packets that went out and came back in (hairpinning, RFC 4787 REQ-9). */
  hairpinPackets = 0;
  /** ICMP errors translated (both directions). */
  icmpErrorsTranslated = 0;
  /** Packets generated by the core (RSTs for expired flows, ICMP errors). */
  repliesGenerated = 0;

  /** Non-first fragments held until their first fragment came (RFC 4787 REQ-14). */
  fragmentsHeld = 0;
  /** Held fragments translated and queued for output once their first fragment came. */
  fragmentsReleased = 0;

  /** Drops, one slot per DropReason. */
  readonly drops = new Float64Array(DROP_REASON_NAMES.length);

  dropTotal(): number {
    let n = 0;
    for (let i = 0; i < this.drops.length; i++) n += this.drops[i];
    return n;
  }
}
