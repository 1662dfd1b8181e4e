/**
 * Shared-address mode (the one-ENI NAT instance): the NAT address is the outside interface's own
 * address, so the host's own connections and tunnat's share it. tunnat translates to an internal
 * address the host does not own (--internal-address, routed into the TUN), and one nft table,
 * `ip tunnat_shared_T`, lets the kernel move packets between the two, keyed by port:
 *
 *   prerouting (nat):  ip daddr SHARED tcp/udp dport RANGE      dnat to INTERNAL
 *                      ip daddr SHARED tcp|udp dport FORWARDS   dnat to INTERNAL
 *   postrouting (nat): ip saddr INTERNAL                        snat to SHARED
 *   input (filter):    ip daddr SHARED tcp/udp dport RANGE, not established/related:
 *                      counter "shared_unsolicited" drop
 *
 * NAT flows take their ports from a reserved RANGE that does not overlap the host's ephemeral
 * range (net.ipv4.ip_local_port_range): by default the ports above it. What tunnat sends out from
 * INTERNAL:port leaves as SHARED:port (the kernel keeps the port; conntrack would pick another
 * only for a tuple the host itself holds), and its replies come back to INTERNAL through the same
 * conntrack entry. A new inbound packet to the range (an EIF/ADF inbound flow, a scan) is sent to
 * INTERNAL as well, where tunnat decides: it is dropped silently and counted as unsolicited unless
 * a mapping's filtering lets it in. What the nat chains never see (packets conntrack calls
 * invalid, such as a stray FIN to the range) would reach the host's stack and be answered with an
 * RST: the input rule drops them. Everything else (the host's sshd, its outbound connections,
 * ICMP to and from it, its own replies, which conntrack knows as established) is never matched:
 * the host keeps its traffic. ICMP flows and errors of tunnat's flows follow their conntrack
 * entries.
 */

import { ErrorCode, TunnatError } from "../base/errors.js";
import { formatIpv4 } from "../wire/addr.js";

/** The shared address, the internal one and the reserved port range. */
export interface SharedMode {
  shared: number;
  internal: number;
  portLo: number;
  portHi: number;
}

/** Fewest ports a default range may have; below this the operator must give --ports. */
export const MIN_DEFAULT_PORTS = 1024;

/** `net.ipv4.ip_local_port_range` text ("32768\t60999") as [lo, hi], or null. */
export function parsePortRange(text: string): [number, number] | null {
  const m = /^\s*(\d+)\s+(\d+)\s*$/.exec(text);
  if (!m) return null;
  const lo = Number(m[1]);
  const hi = Number(m[2]);
  return lo >= 0 && hi <= 65535 && lo <= hi ? [lo, hi] : null;
}

/**
 * The reserved range: the given one (refused when it overlaps the host's ephemeral range), or by
 * default the ports above the ephemeral range, or below it (from 1024) when fewer than
 * MIN_DEFAULT_PORTS lie above.
 * Throws TUNNAT_ERR_CONFIG (exit 2).
 */
export function reservedRange(
  ephemeral: [number, number],
  given: [number, number] | null,
  where: string,
): [number, number] {
  const [elo, ehi] = ephemeral;
  const range = `${elo}-${ehi}`;
  if (given) {
    const [lo, hi] = given;
    if (lo <= ehi && hi >= elo)
      throw new TunnatError(
        ErrorCode.Config,
        `invalid ${where} "${lo}-${hi}": in shared-address mode tunnat's ports must not overlap the host's ephemeral ports (net.ipv4.ip_local_port_range ${range}); choose a range outside it${ehi < 65535 ? `, e.g. ${ehi + 1}-65535` : ""}`,
      );
    return given;
  }
  const above: [number, number] = [ehi + 1, 65535];
  const below: [number, number] = [1024, elo - 1];
  const size = (r: [number, number]) => r[1] - r[0] + 1;
  // Above the ephemeral range first: below it lie the ports host services listen on (3306, 8080).
  const best = size(above) >= MIN_DEFAULT_PORTS ? above : below;
  if (size(best) < MIN_DEFAULT_PORTS)
    throw new TunnatError(
      ErrorCode.Config,
      `shared-address mode: the host's ephemeral ports (net.ipv4.ip_local_port_range ${range}) leave fewer than ${MIN_DEFAULT_PORTS} ports for tunnat; narrow that range (sysctl) or give --ports outside it`,
    );
  return best;
}

/**
 * An outside address of the flow table as operators must see it: the address the internet sees.
 * In shared-address mode the table holds the internal address, which never leaves the host (the
 * kernel rewrites it to the shared one), so metrics labels, `tunnat stats`, `status` and `flows`,
 * and the mapping log show the shared address instead. Without the mode: the address as is.
 */
export function shownAddress(m: SharedMode | null | undefined): (addr: number) => number {
  if (!m) return (a) => a;
  const { internal, shared } = m;
  return (a) => (a === internal ? shared : a);
}

export function sharedTableName(table: number): string {
  return `tunnat_shared_${table}`;
}

/** The nft table of shared-address mode (see the file comment). */
export function sharedScript(
  m: SharedMode,
  table: number,
  forwards: readonly { proto: number; port: number }[],
): string {
  const shared = formatIpv4(m.shared);
  const internal = formatIpv4(m.internal);
  const range = `${m.portLo}-${m.portHi}`;
  const fwd = (proto: number) =>
    forwards
      .filter((f) => f.proto === proto)
      .map((f) => f.port)
      .sort((a, b) => a - b);
  const tcp = fwd(6);
  const udp = fwd(17);
  const set = (ports: number[]) => `{ ${ports.join(", ")} }`;
  return `${[
    `table ip ${sharedTableName(table)} {`,
    "  counter shared_unsolicited {",
    "  }",
    "  chain pre {",
    "    type nat hook prerouting priority dstnat; policy accept;",
    `    ip daddr ${shared} meta l4proto { tcp, udp } th dport ${range} dnat to ${internal}`,
    ...(tcp.length ? [`    ip daddr ${shared} tcp dport ${set(tcp)} dnat to ${internal}`] : []),
    ...(udp.length ? [`    ip daddr ${shared} udp dport ${set(udp)} dnat to ${internal}`] : []),
    "  }",
    "  chain post {",
    "    type nat hook postrouting priority srcnat; policy accept;",
    `    ip saddr ${internal} snat to ${shared}`,
    "  }",
    "  chain in {",
    "    type filter hook input priority filter; policy accept;",
    `    ip daddr ${shared} meta l4proto { tcp, udp } th dport ${range} ct state != { established, related } counter name "shared_unsolicited" drop`,
    "  }",
    "}",
  ].join("\n")}\n`;
}
