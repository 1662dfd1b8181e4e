/**
 * The connection table's part of the configuration: already parsed and validated (control/config.ts
 * names bad fields). NatConfig (nat/config.ts) extends it with what only the translator reads.
 * Addresses are host-order uint32 numbers; times are seconds.
 */
import type { Timeouts } from "../base/protocols.js";

export type { Timeouts } from "../base/protocols.js";

type MappingMode = "endpoint-independent" | "per-destination";
type FilteringMode = "address-and-port-dependent" | "address-dependent" | "endpoint-independent";

export interface ConntrackConfig {
  /** The NAT (outside) addresses, host order. Paired pooling spreads inside hosts over them. */
  natAddresses: number[];
  /** Outside port range for TCP and UDP mappings, inclusive. */
  portLo: number;
  portHi: number;
  mapping: MappingMode;
  filtering: FilteringMode;
  /** Idle timers per protocol and TCP state class (base/protocols.ts TIMEOUT_SPECS). */
  timeouts: Timeouts;
  /** Connection table capacity (flows). */
  maxFlows: number;
  /** Mappings one inside host may hold, per protocol (RFC 6888 REQ-4); 0 = no limit. */
  perHostQuota: number;
  /** Seconds a freed port rests before reuse while others are free (RFC 6888 REQ-8). */
  portReuseDelay: number;
  /** Hash seed; undefined draws a random one per process. Tests pin it. */
  hashSeed?: number;
}
