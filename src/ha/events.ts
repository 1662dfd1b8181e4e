/**
 * The flow events the active streams to its standby, collected off the packet path: the flow
 * table calls `flowEvent(kind, flow)` on a creation, a state change or a removal (never per
 * packet), and this ring records it in preallocated typed arrays, with no allocation. A creation
 * or change records only the flow id (the sender reads the flow's current fields when it flushes,
 * so a flow that changed five times between two flushes is sent once with its latest state); a
 * removal records the tuple, since the id may be reused before the flush.
 *
 * When the ring is full the oldest events are not overwritten: the ring stops recording and sets
 * `overflowed`, and the sender answers with a bulk resync (a walk of the whole table), which is
 * bounded in memory however fast flows churn.
 */
import { FlowEvent, type FlowHooks } from "../conntrack/table.js";

/** What the ring reads a removed flow's tuple from (a FlowTable). */
export interface FlowFields {
  proto(f: number): number;
  iaddr(f: number): number;
  iport(f: number): number;
  oaddr(f: number): number;
  oport(f: number): number;
  raddr(f: number): number;
  rport(f: number): number;
}

export class EventRing implements FlowHooks {
  readonly capacity: number;
  /** Kind (FlowEvent) per entry. */
  readonly kind: Uint8Array;
  /** Flow id per entry. */
  readonly flow: Int32Array;
  /**
   * Removed flows' tuple and outside endpoint (its port rests on the standby too): proto, inside
   * addr, remote addr, iport << 16 | rport, NAT addr, NAT port.
   */
  readonly proto: Uint8Array;
  readonly iaddr: Uint32Array;
  readonly oaddr: Uint32Array;
  readonly oport: Uint16Array;
  readonly raddr: Uint32Array;
  readonly ports: Uint32Array;
  private head = 0;
  private len = 0;
  /** Events were lost since the last reset(): the consumer must resync the whole table. */
  overflowed = false;
  /** Recording on/off (a standby records nothing). */
  enabled = true;
  /** Events recorded since construction (a metric). */
  recorded = 0;
  private fields: FlowFields | null = null;

  constructor(capacity: number) {
    this.capacity = Math.max(16, Math.floor(capacity));
    this.kind = new Uint8Array(this.capacity);
    this.flow = new Int32Array(this.capacity);
    this.proto = new Uint8Array(this.capacity);
    this.iaddr = new Uint32Array(this.capacity);
    this.oaddr = new Uint32Array(this.capacity);
    this.oport = new Uint16Array(this.capacity);
    this.raddr = new Uint32Array(this.capacity);
    this.ports = new Uint32Array(this.capacity);
  }

  /** The table whose removed flows' tuples are read (set once the table exists). */
  attach(fields: FlowFields): void {
    this.fields = fields;
  }

  get length(): number {
    return this.len;
  }

  flowEvent(kind: number, flow: number): void {
    if (!this.enabled || this.overflowed) return;
    if (this.len === this.capacity) {
      this.overflowed = true;
      return;
    }
    const i = (this.head + this.len) % this.capacity;
    this.kind[i] = kind;
    this.flow[i] = flow;
    if (kind === FlowEvent.REMOVED && this.fields !== null) {
      const t = this.fields;
      this.proto[i] = t.proto(flow);
      this.iaddr[i] = t.iaddr(flow);
      this.oaddr[i] = t.oaddr(flow);
      this.oport[i] = t.oport(flow);
      this.raddr[i] = t.raddr(flow);
      this.ports[i] = ((t.iport(flow) << 16) | t.rport(flow)) >>> 0;
    }
    this.len++;
    this.recorded++;
  }

  /** Index of the oldest entry, or -1 when empty. */
  peek(): number {
    return this.len === 0 ? -1 : this.head;
  }

  /** Drop the oldest entry. */
  shift(): void {
    if (this.len === 0) return;
    this.head = (this.head + 1) % this.capacity;
    this.len--;
  }

  /** Forget everything (after a bulk resync has been scheduled, or on leaving the active role). */
  reset(): void {
    this.head = 0;
    this.len = 0;
    this.overflowed = false;
  }
}
