/**
 * The eviction list: the flows no reply has reached, oldest first, doubly linked, so that a reply
 * or a removal unlinks a flow in O(1) and the victim of a full table is always the head. The next
 * link lives in the flow record's flags word (record.ts: LINK_SHIFT), the previous one here.
 * A flow that saw a reply is never on it, so it is never evicted.
 */
import { FLAG_BITS, LINK_SHIFT, R_FLAGS, REC } from "./record.js";

export class EvictionList {
  /** The oldest unreplied flow, or -1. */
  head = -1;
  private tail = -1;
  /** Previous flow + 1 per flow id; 0 for the head and for flows not on the list. */
  private readonly prev: Uint32Array;

  constructor(
    private readonly rec: Uint32Array,
    capacity: number,
  ) {
    this.prev = new Uint32Array(capacity);
  }

  /** Append a new flow (it has no reply yet). */
  push(f: number): void {
    const t = this.tail;
    this.setNext(f, -1);
    this.prev[f] = t + 1;
    if (t >= 0) this.setNext(t, f);
    else this.head = f;
    this.tail = f;
  }

  /** Take a flow off the list (a reply came, or it is removed). */
  unlink(f: number): void {
    const p = this.prev[f]! - 1;
    const n = this.next(f);
    if (p >= 0) this.setNext(p, n);
    else this.head = n;
    if (n >= 0) this.prev[n] = p + 1;
    else this.tail = p;
    this.setNext(f, -1);
    this.prev[f] = 0;
  }

  memoryBytes(): number {
    return this.prev.byteLength;
  }

  private next(f: number): number {
    return (this.rec[f * REC + R_FLAGS]! >>> LINK_SHIFT) - 1;
  }

  private setNext(f: number, next: number): void {
    const i = f * REC + R_FLAGS;
    this.rec[i] = ((this.rec[i]! & FLAG_BITS) | ((next + 1) << LINK_SHIFT)) >>> 0;
  }
}
