/**
 * The endpoint-independent mapping table (RFC 4787 REQ-1, RFC 5382 REQ-1): (proto, inside
 * addr:port) -> (NAT address, outside port), with the number of flows that use each mapping. A
 * mapping lives as long as its last flow. Ids are dense integers from a free list threaded
 * through `refs`; the port allocator's slot for (NAT address, proto, port) holds id + 1, so the
 * outside lookup of a mapping costs one array read. Typed arrays only, sized at construction.
 * In per-destination mode the table is empty (capacity 0) and nothing calls it.
 */
import { EndpointIndex } from "./index.js";

export class MappingTable {
  readonly proto: Uint8Array;
  readonly iaddr: Uint32Array;
  readonly iport: Uint16Array;
  /** Index of the mapping's NAT address in the pool (pool.addrs). */
  readonly addr: Uint16Array;
  readonly oport: Uint16Array;
  /** Flows using the mapping; for a free id, the free-list link (next + 1, 0 ends it). */
  readonly refs: Uint32Array;
  // Only with the mapping log (RFC 6888 §4): what its line needs when the mapping ends.
  readonly created: Uint32Array;
  readonly bytesOut: Float64Array;
  readonly bytesIn: Float64Array;
  /** Live mappings. */
  live = 0;
  private free: number;
  private readonly index: EndpointIndex;

  /**
   * `capacity` mappings (0 in per-destination mode), an index of `slots` slots (a power of two),
   * and the mapping log's fields when `logged`.
   */
  constructor(capacity: number, slots: number, seed: number, logged: boolean) {
    this.proto = new Uint8Array(capacity);
    this.iaddr = new Uint32Array(capacity);
    this.iport = new Uint16Array(capacity);
    this.addr = new Uint16Array(capacity);
    this.oport = new Uint16Array(capacity);
    this.refs = new Uint32Array(capacity);
    const logM = logged ? capacity : 0;
    this.created = new Uint32Array(logM);
    this.bytesOut = new Float64Array(logM);
    this.bytesIn = new Float64Array(logM);
    for (let m = 0; m < capacity - 1; m++) this.refs[m] = m + 2;
    this.free = capacity > 0 ? 0 : -1;
    this.index = new EndpointIndex(
      capacity > 0 ? slots : 4,
      seed,
      this.proto,
      this.iaddr,
      this.iport,
    );
  }

  /** The mapping of inside endpoint (proto, iaddr:iport), or -1. */
  find(proto: number, iaddr: number, iport: number): number {
    return this.index.find(proto, iaddr, iport);
  }

  /**
   * A new mapping with no flows yet (the caller counts its first). There is always a free id:
   * a mapping needs a flow, and there are as many ids as flow slots.
   */
  add(proto: number, iaddr: number, iport: number, a: number, oport: number, now: number): number {
    const m = this.free;
    this.free = this.refs[m]! - 1;
    this.refs[m] = 0;
    this.proto[m] = proto;
    this.iaddr[m] = iaddr;
    this.iport[m] = iport;
    this.addr[m] = a;
    this.oport[m] = oport;
    if (this.created.length > 0) {
      this.created[m] = now;
      this.bytesOut[m] = 0;
      this.bytesIn[m] = 0;
    }
    this.index.insert(m);
    this.live++;
    return m;
  }

  /** Mapping `m` lost its last flow: out of the index and back to the free list. */
  release(m: number): void {
    this.index.delete(m);
    this.live--;
    this.proto[m] = 0;
    this.refs[m] = this.free + 1;
    this.free = m;
  }

  memoryBytes(): number {
    let n = this.index.slots.byteLength;
    for (const a of [
      this.proto,
      this.iaddr,
      this.iport,
      this.addr,
      this.oport,
      this.refs,
      this.created,
      this.bytesOut,
      this.bytesIn,
    ]) {
      n += a.byteLength;
    }
    return n;
  }
}
