/**
 * The core's view of configuration: already parsed and validated (control/config.ts does that and
 * names bad fields). Addresses are host-order uint32 numbers; times are seconds. The connection
 * table's part is ConntrackConfig (conntrack/config.ts); NatConfig adds what the translator reads.
 */
import { defaultTimeouts, TIMEOUT_SPECS, type Timeouts } from "../base/protocols.js";
import type { ConntrackConfig } from "../conntrack/config.js";

export type { Timeouts } from "../conntrack/config.js";

interface Prefix {
  /** Network address, host-order uint32 (already masked). */
  addr: number;
  /** Prefix length 0..32. */
  len: number;
}

export interface NatConfig extends ConntrackConfig {
  /** Inside prefixes whose sources are translated. */
  inside: Prefix[];
  /** AWS NAT Gateway behaviour: an inside segment for an expired TCP flow is answered with RST. */
  rstOnExpired: boolean;
  /** Packets start with a 10-byte virtio_net_hdr (TUN opened with IFF_VNET_HDR). */
  vnetHdr: boolean;
  /** Add back the TTL lost on the second pass through the kernel (docs/architecture.md §Packet path). */
  restoreTtl: boolean;
  /** Answer packets that cannot get a mapping with ICMP 3/13 (RFC 5508 REQ-8, RFC 6888 REQ-11b). */
  icmpAdminProhibited: boolean;
}

/** The RFC defaults (base/protocols.ts TIMEOUT_SPECS). */
export const DEFAULT_TIMEOUTS: Timeouts = defaultTimeouts();

/** The `aws` preset: AWS NAT Gateway's 350 s idle timeout for every flow, and RST on expiry. */
export const AWS_TIMEOUTS: Timeouts = Object.fromEntries(
  TIMEOUT_SPECS.map((t) => [t.key, 350]),
) as Timeouts;

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
    ...over,
  };
}
