/**
 * The core's view of configuration: already parsed and validated (control/config.ts does that and
 * names bad fields). Addresses are host-order uint32 numbers; times are seconds.
 */
import type { EgressRule } from "./egress.js";

export type MappingMode = "endpoint-independent" | "per-destination";
export type FilteringMode =
  | "address-and-port-dependent"
  | "address-dependent"
  | "endpoint-independent";

export interface Prefix {
  /** Network address, host-order uint32 (already masked). */
  addr: number;
  /** Prefix length 0..32. */
  len: number;
}

/** A static port forward: inbound to (NAT address, port) reaches (inside, insidePort). */
export interface Forward {
  /** 6 (TCP) or 17 (UDP). */
  proto: number;
  /** The NAT address it listens on (host order), or null for every NAT address. */
  natAddress: number | null;
  port: number;
  /** Inside host, host order; lies in an inside prefix. */
  inside: number;
  insidePort: number;
  /** As written, for metrics labels and logs. */
  text: string;
}

export interface Timeouts {
  /** RFC 5382 REQ-5: at least 7440 s. */
  tcpEstablished: number;
  /** RFC 5382 REQ-5 / RFC 7857: opening and closing states, at least 240 s. */
  tcpTransitory: number;
  /** RFC 4787 REQ-5: at least 120 s, 300 s recommended. */
  udp: number;
  /** RFC 5508 REQ-2: at least 60 s. */
  icmp: number;
}

export interface NatConfig {
  /** The NAT (outside) addresses, host order. Paired pooling spreads inside hosts over them. */
  natAddresses: number[];
  /** Inside prefixes whose sources are translated. */
  inside: Prefix[];
  /** Outside port range for TCP and UDP mappings, inclusive. */
  portLo: number;
  portHi: number;
  mapping: MappingMode;
  filtering: FilteringMode;
  timeouts: Timeouts;
  /** AWS NAT Gateway behaviour: an inside segment for an expired TCP flow is answered with RST. */
  rstOnExpired: boolean;
  /** Connection table capacity (flows). */
  maxFlows: number;
  /** Mappings one inside host may hold, per protocol (RFC 6888 REQ-4); 0 = no limit. */
  perHostQuota: number;
  /** Seconds a freed port rests before reuse while others are free (RFC 6888 REQ-8). */
  portReuseDelay: number;
  /** Packets start with a 10-byte virtio_net_hdr (TUN opened with IFF_VNET_HDR). */
  vnetHdr: boolean;
  /** Add back the TTL lost on the second pass through the kernel (DESIGN.md §1). */
  restoreTtl: boolean;
  /** Answer packets that cannot get a mapping with ICMP 3/13 (RFC 5508 REQ-8, RFC 6888 REQ-11b). */
  icmpAdminProhibited: boolean;
  /** Egress rules, first match decides, evaluated when a flow is created (nat/egress.ts). */
  egress: EgressRule[];
  /** Static port forwards; their ports are never handed out to dynamic mappings. */
  forwards: Forward[];
  /** Hash seed; undefined draws a random one per process. Tests pin it. */
  hashSeed?: number;
}

export const DEFAULT_TIMEOUTS: Timeouts = {
  tcpEstablished: 7440,
  tcpTransitory: 240,
  udp: 300,
  icmp: 60,
};

/** The `aws` preset: AWS NAT Gateway's 350 s idle timeout for every flow, and RST on expiry. */
export const AWS_TIMEOUTS: Timeouts = {
  tcpEstablished: 350,
  tcpTransitory: 350,
  udp: 350,
  icmp: 350,
};

/**
 * The `aws` preset's outside port range: the ephemeral range the usual network ACL allows
 * inbound (1024-65535), so replies to translated flows are not dropped by a NACL. An explicit
 * --ports wins.
 */
export const AWS_PORTS: readonly [number, number] = [1024, 65535];

export function defaultNatConfig(over: Partial<NatConfig> = {}): NatConfig {
  return {
    natAddresses: [],
    inside: [],
    portLo: 1,
    portHi: 65535,
    mapping: "endpoint-independent",
    filtering: "address-and-port-dependent",
    timeouts: { ...DEFAULT_TIMEOUTS },
    rstOnExpired: false,
    maxFlows: 262_144,
    perHostQuota: 0,
    portReuseDelay: 120,
    vnetHdr: false,
    restoreTtl: true,
    icmpAdminProhibited: true,
    egress: [],
    forwards: [],
    ...over,
  };
}
