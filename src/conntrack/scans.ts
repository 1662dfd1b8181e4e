/**
 * Control-plane scans of the flow table: walks over every slot for the flows tool, the mapping
 * log's shutdown pass, top talkers and port usage. They may allocate and take time in proportion
 * to the table's capacity, so nothing on the packet path calls them; metrics read the table's
 * incremental counts (stats.ts) instead.
 */
import { PROTO_SLOTS, protoSlot } from "../base/protocols.js";
import type { HostTable } from "./hosts.js";
import type { PortAllocator } from "./ports.js";

/** What a scan reads of the flow table (table.ts; an interface, so this file does not import it). */
export interface ScannedTable {
  readonly capacity: number;
  readonly ports: PortAllocator;
  readonly hosts: HostTable;
  proto(f: number): number;
  iaddr(f: number): number;
  pktsOut(f: number): number;
  pktsIn(f: number): number;
  bytesOut(f: number): number;
  bytesIn(f: number): number;
}

/** Call fn(flowId) for each live flow. */
export function forEachFlow(t: ScannedTable, fn: (flow: number) => void): void {
  for (let f = 0; f < t.capacity; f++) if (t.proto(f) !== 0) fn(f);
}

/** Ports (echo ids for ICMP) in use and free on NAT address `addrIndex` for `proto`. */
export function portUsage(
  t: ScannedTable,
  addrIndex: number,
  proto: number,
): { used: number; free: number } {
  const pi = protoSlot(proto);
  const used = t.ports.used[addrIndex * PROTO_SLOTS + pi]!;
  return { used, free: t.ports.rangeSize(pi) - used };
}

/**
 * Traffic per tracked inside host, finished and live flows together (for top talkers). Traffic
 * of hosts that left the table is in hosts.departed*.
 */
export function hostTraffic(
  t: ScannedTable,
  fn: (addr: number, pktsOut: number, bytesOut: number, pktsIn: number, bytesIn: number) => void,
): void {
  const h = t.hosts;
  const po = Float64Array.from(h.pktsOut);
  const pin = Float64Array.from(h.pktsIn);
  const bo = Float64Array.from(h.bytesOut);
  const bin = Float64Array.from(h.bytesIn);
  for (let f = 0; f < t.capacity; f++) {
    if (t.proto(f) === 0) continue;
    const s = h.find(t.iaddr(f));
    if (s < 0) continue;
    po[s]! += t.pktsOut(f);
    pin[s]! += t.pktsIn(f);
    bo[s]! += t.bytesOut(f);
    bin[s]! += t.bytesIn(f);
  }
  for (let s = 0; s < h.slots; s++) {
    if (h.flows[s] !== 0) fn(h.addr[s]!, po[s]!, bo[s]!, pin[s]!, bin[s]!);
  }
}
