/**
 * The transport protocols tunnat translates: the one definition every layer derives from (port
 * table slots, idle timers, metric labels, the control socket's filter, the flows tool, the
 * mapping log). Adding a protocol starts here; see docs/architecture.md §Layers.
 */

/** An idle timer of a protocol: its config key, default, and the RFC minimum with its reason. */
export interface TimeoutSpec {
  /** Key in the `timeouts` config object (and the NatConfig.timeouts field). */
  readonly key: TimeoutKey;
  /** Default seconds (RFC values). */
  readonly default: number;
  /** RFC minimum in seconds (not enforced under the aws preset). */
  readonly min: number;
  readonly why: string;
}

export interface Protocol {
  /** IPv4 protocol number (IANA). */
  readonly number: number;
  /** Lower-case name: metric label value, control-socket and CLI spelling, mapping-log field. */
  readonly name: ProtocolName;
  /** Index of the protocol's part of the port table, host quotas and flow counts (0..n-1). */
  readonly slot: number;
  /** True when flows are keyed by ports; false when by an ICMP echo identifier. */
  readonly ports: boolean;
  /** Its idle timers: TCP has an established and a transitory one, the others one each. */
  readonly timeouts: readonly TimeoutSpec[];
}

export type ProtocolName = "tcp" | "udp" | "icmp";
type TimeoutKey = "tcpEstablished" | "tcpTransitory" | "udp" | "icmp";

/** IPv4 protocol numbers the connection table tracks. */
export const Proto = { TCP: 6, UDP: 17, ICMP: 1 } as const;
export type Proto = (typeof Proto)[keyof typeof Proto];

/** In slot order. */
export const PROTOCOLS: readonly Protocol[] = [
  {
    number: Proto.TCP,
    name: "tcp",
    slot: 0,
    ports: true,
    timeouts: [
      {
        key: "tcpEstablished",
        default: 7440,
        min: 7440,
        why: "RFC 5382 REQ-5 requires at least 7440 s (2 h 4 min)",
      },
      {
        key: "tcpTransitory",
        default: 240,
        min: 240,
        why: "RFC 5382 REQ-5 requires at least 240 s (4 min)",
      },
    ],
  },
  {
    number: Proto.UDP,
    name: "udp",
    slot: 1,
    ports: true,
    timeouts: [
      { key: "udp", default: 300, min: 120, why: "RFC 4787 REQ-5 requires at least 120 s (2 min)" },
    ],
  },
  {
    number: Proto.ICMP,
    name: "icmp",
    slot: 2,
    ports: false,
    timeouts: [{ key: "icmp", default: 60, min: 60, why: "RFC 5508 REQ-2 requires at least 60 s" }],
  },
];

/** Number of protocol slots (the port table has one part per slot per NAT address). */
export const PROTO_SLOTS = PROTOCOLS.length;

/** Every idle timer, in protocol order. */
export const TIMEOUT_SPECS: readonly TimeoutSpec[] = PROTOCOLS.flatMap((p) => p.timeouts);

/** Idle timers in seconds, one per TimeoutKey. */
export type Timeouts = Record<TimeoutKey, number>;

/** The RFC defaults of every timer. */
export function defaultTimeouts(): Timeouts {
  return Object.fromEntries(TIMEOUT_SPECS.map((t) => [t.key, t.default])) as Timeouts;
}

/** Slot per protocol number; -1 for a protocol not tracked. One array read on the packet path. */
const SLOT_OF = new Int8Array(256).fill(-1);
for (const p of PROTOCOLS) SLOT_OF[p.number] = p.slot;

/** The slot of a tracked protocol number (callers pass only tracked protocols). */
export function protoSlot(proto: number): number {
  return SLOT_OF[proto & 0xff];
}

/** The protocol with this number, or undefined. */
function protocolByNumber(proto: number): Protocol | undefined {
  const s = SLOT_OF[proto & 0xff];
  return s < 0 ? undefined : PROTOCOLS[s];
}

/** The protocol with this name, or undefined. */
export function protocolByName(name: string): Protocol | undefined {
  return PROTOCOLS.find((p) => p.name === name);
}

/** The name of a protocol number ("tcp"), or the number as text for an untracked one. */
export function protocolName(proto: number): string {
  return protocolByNumber(proto)?.name ?? String(proto);
}

/** The names, in slot order ("tcp, udp or icmp" in messages). */
export const PROTOCOL_NAMES: readonly ProtocolName[] = PROTOCOLS.map((p) => p.name);
