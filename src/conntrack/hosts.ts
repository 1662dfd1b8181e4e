/**
 * Inside hosts with live flows: mapping counts per protocol for the per-host quota (RFC 6888
 * REQ-4), and traffic of the host's finished flows for the top-talkers metric. A small
 * open-addressing table keyed by address (linear probing, backward-shift deletion); a host
 * enters with its first flow and leaves with its last, its totals then moving to `departed*`.
 *
 * The table has a fixed size. When it is full a new host is "untracked": with no quota it still
 * gets flows (its traffic is counted in `departed*` as it ends); with a quota it is refused, since
 * its quota could not be enforced.
 */

import { PROTO_SLOTS } from "../base/protocols.js";
import { hashWord, nextPow2 } from "./hash.js";

export class HostTable {
  readonly slots: number;
  /** Hosts the table accepts (3/4 of the slots). */
  readonly maxHosts: number;
  private readonly mask: number;
  readonly addr: Uint32Array;
  /** Live flows per slot; 0 = empty slot. */
  readonly flows: Uint32Array;
  /** Mappings per slot and protocol slot (slot * PROTO_SLOTS + protocol slot). */
  readonly maps: Uint32Array;
  /** Traffic of the host's flows that have ended (live flows carry their own counters). */
  readonly pktsOut: Float64Array;
  readonly pktsIn: Float64Array;
  readonly bytesOut: Float64Array;
  readonly bytesIn: Float64Array;
  count = 0;
  /** Traffic of hosts that have left the table, or were never tracked. */
  departedPktsOut = 0;
  departedPktsIn = 0;
  departedBytesOut = 0;
  departedBytesIn = 0;

  constructor(
    slots: number,
    private readonly seed: number,
  ) {
    this.slots = nextPow2(Math.max(16, slots));
    this.mask = this.slots - 1;
    this.maxHosts = (this.slots * 3) >>> 2;
    this.addr = new Uint32Array(this.slots);
    this.flows = new Uint32Array(this.slots);
    this.maps = new Uint32Array(this.slots * PROTO_SLOTS);
    this.pktsOut = new Float64Array(this.slots);
    this.pktsIn = new Float64Array(this.slots);
    this.bytesOut = new Float64Array(this.slots);
    this.bytesIn = new Float64Array(this.slots);
  }

  /** Slot of host `addr`, or -1. */
  find(addr: number): number {
    const a = addr >>> 0;
    let s = hashWord(this.seed, a) & this.mask;
    for (;;) {
      if (this.flows[s] === 0) return -1;
      if (this.addr[s] === a) return s;
      s = (s + 1) & this.mask;
    }
  }

  /** Mappings host `addr` holds for protocol slot `pi`. */
  mappings(addr: number, pi: number): number {
    const s = this.find(addr);
    return s < 0 ? 0 : this.maps[s * PROTO_SLOTS + pi];
  }

  /** Would a new host be refused? */
  get full(): boolean {
    return this.count >= this.maxHosts;
  }

  /** A flow of host `addr` was created (with a new mapping if `newMapping`). False if untracked. */
  addFlow(addr: number, pi: number, newMapping: boolean): boolean {
    const a = addr >>> 0;
    let s = hashWord(this.seed, a) & this.mask;
    for (;;) {
      if (this.flows[s] === 0) break;
      if (this.addr[s] === a) {
        this.flows[s]++;
        if (newMapping) this.maps[s * PROTO_SLOTS + pi]++;
        return true;
      }
      s = (s + 1) & this.mask;
    }
    if (this.count >= this.maxHosts) return false;
    this.count++;
    this.addr[s] = a;
    this.flows[s] = 1;
    const m = s * PROTO_SLOTS;
    this.maps[m] = 0;
    this.maps[m + 1] = 0;
    this.maps[m + 2] = 0;
    if (newMapping) this.maps[m + pi] = 1;
    this.pktsOut[s] = 0;
    this.pktsIn[s] = 0;
    this.bytesOut[s] = 0;
    this.bytesIn[s] = 0;
    return true;
  }

  /** A flow of host `addr` ended, taking its mapping with it if `mappingGone`; fold its traffic. */
  removeFlow(
    addr: number,
    pi: number,
    mappingGone: boolean,
    pktsOut: number,
    bytesOut: number,
    pktsIn: number,
    bytesIn: number,
  ): void {
    const s = this.find(addr);
    if (s < 0) {
      this.departedPktsOut += pktsOut;
      this.departedPktsIn += pktsIn;
      this.departedBytesOut += bytesOut;
      this.departedBytesIn += bytesIn;
      return;
    }
    if (mappingGone && this.maps[s * PROTO_SLOTS + pi] > 0) this.maps[s * PROTO_SLOTS + pi]--;
    this.pktsOut[s] += pktsOut;
    this.pktsIn[s] += pktsIn;
    this.bytesOut[s] += bytesOut;
    this.bytesIn[s] += bytesIn;
    if (--this.flows[s] > 0) return;
    this.departedPktsOut += this.pktsOut[s];
    this.departedPktsIn += this.pktsIn[s];
    this.departedBytesOut += this.bytesOut[s];
    this.departedBytesIn += this.bytesIn[s];
    this.deleteSlot(s);
  }

  /**
   * Add traffic of ended flows straight to a host (a restored table: conntrack/snapshot.ts).
   * Traffic of an unknown host goes to `departed*`.
   */
  addBytes(addr: number, pktsOut: number, bytesOut: number, pktsIn: number, bytesIn: number): void {
    const s = this.find(addr);
    if (s < 0) {
      this.departedPktsOut += pktsOut;
      this.departedPktsIn += pktsIn;
      this.departedBytesOut += bytesOut;
      this.departedBytesIn += bytesIn;
      return;
    }
    this.pktsOut[s] += pktsOut;
    this.pktsIn[s] += pktsIn;
    this.bytesOut[s] += bytesOut;
    this.bytesIn[s] += bytesIn;
  }

  /** Backward-shift deletion (Knuth 6.4 Algorithm R): no tombstones, chains stay short. */
  private deleteSlot(slot: number): void {
    const mask = this.mask;
    let i = slot;
    let j = slot;
    for (;;) {
      j = (j + 1) & mask;
      if (this.flows[j] === 0) break;
      const k = hashWord(this.seed, this.addr[j]) & mask;
      // The entry at j may move to i only if its home k is not cyclically within (i, j].
      if (i <= j ? i < k && k <= j : i < k || k <= j) continue;
      this.copy(j, i);
      i = j;
    }
    this.flows[i] = 0;
    this.count--;
  }

  private copy(from: number, to: number): void {
    this.addr[to] = this.addr[from];
    this.flows[to] = this.flows[from];
    const f = from * PROTO_SLOTS;
    const t = to * PROTO_SLOTS;
    this.maps[t] = this.maps[f];
    this.maps[t + 1] = this.maps[f + 1];
    this.maps[t + 2] = this.maps[f + 2];
    this.pktsOut[to] = this.pktsOut[from];
    this.pktsIn[to] = this.pktsIn[from];
    this.bytesOut[to] = this.bytesOut[from];
    this.bytesIn[to] = this.bytesIn[from];
  }

  /** Typed-array bytes held. */
  memoryBytes(): number {
    return (
      this.addr.byteLength +
      this.flows.byteLength +
      this.maps.byteLength +
      this.pktsOut.byteLength +
      this.pktsIn.byteLength +
      this.bytesOut.byteLength +
      this.bytesIn.byteLength
    );
  }
}
