/**
 * Flow create/destroy events for `tunnat flows --follow` (what `conntrack -E` shows), and each
 * flow's creation second for `tunnat flows --sort age`.
 *
 * The flow table calls the two hooks of `hooks` once per flow created and once per flow removed
 * (never per packet). Each call copies the flow's fields into a fixed ring of EVENT_CAPACITY
 * records in preallocated typed arrays: nothing is allocated on the data path, and nothing is
 * written to any socket there. The control socket drains the ring every DRAIN_MS for each
 * follower. A follower that falls more than the ring behind (a slow reader, or one whose socket
 * is backed up) skips what was overwritten and is told how many events it missed; the ring
 * never grows.
 */
import { FlowEvent, type FlowHooks } from "../conntrack/hooks.js";
import type { FlowTable } from "../conntrack/table.js";

/** Events kept for followers; older ones are overwritten. */
const EVENT_CAPACITY = 8192;
/** Numbers per event record. */
const W = 15;

const EventKind = { Create: 1, Destroy: 2 } as const;

/** One event as the control socket sends it (after the "type":"event" tag). */
export interface FlowEventRecord {
  event: "new" | "destroy";
  proto: number;
  state: number;
  insideAddr: number;
  insidePort: number;
  outsideAddr: number;
  outsidePort: number;
  remoteAddr: number;
  remotePort: number;
  /** The table's clock, whole seconds. */
  at: number;
  pktsOut: number;
  pktsIn: number;
  bytesOut: number;
  bytesIn: number;
  /** Seconds the flow lived (destroy only). */
  lifetime: number;
}

export class FlowEvents {
  /** Events written since start; event n lives at slot n % capacity. */
  seq = 0;
  /** Creation second of each live flow, by flow id (0 before attach). */
  created: Uint32Array;
  readonly hooks: Required<Pick<FlowHooks, "flowEvent">>;
  /** The hook itself (the daemon may share the table's one hook with the HA ring). */
  readonly flowEvent: (kind: number, f: number) => void;
  private table: FlowTable | undefined;
  private readonly ring: Float64Array;

  constructor(
    tableCapacity: number,
    readonly capacity = EVENT_CAPACITY,
    /** The table's clock in whole seconds (a read, no allocation). */
    private readonly nowSec: () => number = () => 0,
  ) {
    this.created = new Uint32Array(tableCapacity);
    this.ring = new Float64Array(capacity * W);
    this.flowEvent = (kind, f) => {
      if (kind === FlowEvent.CREATED) {
        const now = this.nowSec();
        this.created[f] = now;
        this.record(EventKind.Create, f, now);
      } else if (kind === FlowEvent.REMOVED) this.record(EventKind.Destroy, f, this.nowSec());
    };
    this.hooks = { flowEvent: this.flowEvent };
  }

  /** The table whose hooks these are (the hooks read the flow's fields from it). */
  attach(table: FlowTable): void {
    this.table = table;
    if (this.created.length !== table.capacity) this.created = new Uint32Array(table.capacity);
  }

  /** Flows already in the table (restored from a checkpoint): their creation is `now`. */
  adopt(table: FlowTable, now: number): void {
    for (let f = 0; f < table.capacity; f++) if (table.proto(f) !== 0) this.created[f] = now;
  }

  private record(kind: number, f: number, now: number): void {
    const t = this.table;
    if (t === undefined) return;
    const r = this.ring;
    const b = (this.seq % this.capacity) * W;
    r[b] = kind;
    r[b + 1] = t.proto(f);
    r[b + 2] = t.state(f);
    r[b + 3] = t.iaddr(f);
    r[b + 4] = t.iport(f);
    r[b + 5] = t.oaddr(f);
    r[b + 6] = t.oport(f);
    r[b + 7] = t.raddr(f);
    r[b + 8] = t.rport(f);
    r[b + 9] = now;
    r[b + 10] = t.pktsOut(f);
    r[b + 11] = t.pktsIn(f);
    r[b + 12] = t.bytesOut(f);
    r[b + 13] = t.bytesIn(f);
    r[b + 14] = kind === EventKind.Destroy ? Math.max(0, now - this.created[f]) : 0;
    this.seq++;
  }

  /**
   * The events from `cursor` on (at most `max`), through `fn`; returns the new cursor and how
   * many events were overwritten before they could be read.
   */
  read(
    cursor: number,
    max: number,
    fn: (e: FlowEventRecord) => void,
  ): { cursor: number; missed: number } {
    let missed = 0;
    let c = cursor;
    if (this.seq - c > this.capacity) {
      missed = this.seq - this.capacity - c;
      c = this.seq - this.capacity;
    }
    const r = this.ring;
    const end = Math.min(this.seq, c + max);
    for (; c < end; c++) {
      const b = (c % this.capacity) * W;
      fn({
        event: r[b] === EventKind.Create ? "new" : "destroy",
        proto: r[b + 1],
        state: r[b + 2],
        insideAddr: r[b + 3],
        insidePort: r[b + 4],
        outsideAddr: r[b + 5],
        outsidePort: r[b + 6],
        remoteAddr: r[b + 7],
        remotePort: r[b + 8],
        at: r[b + 9],
        pktsOut: r[b + 10],
        pktsIn: r[b + 11],
        bytesOut: r[b + 12],
        bytesIn: r[b + 13],
        lifetime: r[b + 14],
      });
    }
    return { cursor: c, missed };
  }
}
