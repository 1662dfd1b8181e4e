/**
 * The flow table as bytes, and back: what a restart keeps (control/table-state.ts writes it to
 * the state file) and what a standby copies from its active peer.
 *
 * Contract:
 * - Pure: no I/O, no clock. Times go in as the table's whole seconds (`now`); a record holds the
 *   flow's remaining lifetime, never an absolute stamp, so the reader can subtract the time that
 *   passed while nobody held the table (a monotonic clock starts over with each process).
 * - A record is fixed-size and little-endian. encodeFlow/decodeFlow work on one flow at a given
 *   offset of a DataView; the state file's body (SnapshotWriter, restoreTable) and the HA sync
 *   stream (src/ha/sync.ts, which frames records its own way) are both built on them, and both
 *   apply a record through applyFlow / applyRemoval, so a restored flow and a synced flow are
 *   the same thing. Besides a live flow (RecordKind.FLOW) a record may say that a flow ended and
 *   its outside port rests (RecordKind.REMOVED: the sync's removal events); the state file keeps
 *   its resting ports in a section of their own.
 * - Decoding never throws and never trusts a field: a record with an impossible value is
 *   skipped and counted, a body whose structure is wrong is refused before the table is
 *   touched. Applying goes through FlowTable.adopt(), which keeps every index, mapping, port,
 *   host and eviction-list invariant the packet path relies on.
 * - Control plane only: it allocates and walks the whole table. The writer works in slices
 *   (`next()`), so a periodic checkpoint can yield to the data path between them.
 *
 * Body layout: a sequence of sections, each `tag u32, count u32` followed by `count` records of
 * the tag's fixed size:
 *   FLOWS      64 B  one live flow (FLOW_RECORD_BYTES, see encodeFlow)
 *   MAPPINGS   24 B  proto u8, 0, iport u16, iaddr u32, bytesOut f64, bytesIn f64: traffic of the
 *                    ended flows of an endpoint-independent mapping (only with a mapping log)
 *   RESTING    12 B  NAT addr u32, proto u8, 0, port u16, age u32: a freed port at rest
 *                    (RFC 6888 REQ-8), `age` seconds after its release
 *   HOSTS      40 B  addr u32, 0 u32, pkts out/in f64, bytes out/in f64: traffic of an inside
 *                    host's ended flows (its quota counts follow from the flows)
 *   DEPARTED   32 B  pkts out/in, bytes out/in of hosts no longer tracked (one record)
 *   COUNTERS   40 B  name (32 B ASCII, NUL-padded), value f64: one counter of the CounterSet the
 *                    caller hands in (the table's and the translator's counters)
 * A fuzzy snapshot (flows taken slice by slice while traffic goes on) may hold two flows that no
 * longer agree (a mapping re-made on another port between slices): the later one is refused as a
 * conflict and counted, the rest is restored.
 */
import { PROTO_SLOTS, PROTOCOLS, protoSlot } from "../base/protocols.js";
import { ADOPT_CONFLICT, ADOPT_FULL, FlowFlag, type FlowTable, Proto } from "./table.js";
import { TCP_STATE_NAMES } from "./tcp-state.js";

const SectionTag = {
  FLOWS: 1,
  MAPPINGS: 2,
  RESTING: 3,
  HOSTS: 4,
  DEPARTED: 5,
  COUNTERS: 6,
} as const;

const SECTION_HEADER = 8;
export const FLOW_RECORD_BYTES = 64;
const MAPPING_BYTES = 24;
const RESTING_BYTES = 12;
const HOST_BYTES = 40;
const DEPARTED_BYTES = 32;
const COUNTER_BYTES = 40;
const COUNTER_NAME = 32;

const RECORD_BYTES: Record<number, number> = {
  [SectionTag.FLOWS]: FLOW_RECORD_BYTES,
  [SectionTag.MAPPINGS]: MAPPING_BYTES,
  [SectionTag.RESTING]: RESTING_BYTES,
  [SectionTag.HOSTS]: HOST_BYTES,
  [SectionTag.DEPARTED]: DEPARTED_BYTES,
  [SectionTag.COUNTERS]: COUNTER_BYTES,
};

/** What a flow record says (its byte 3; 0 in every state file written before kinds existed). */
export const RecordKind = {
  /** A live flow: apply it with applyFlow. */
  FLOW: 0,
  /**
   * A flow that ended: its tuple and outside endpoint, and in F_AGE the seconds since its outside
   * port was freed; apply it with applyRemoval. An empty inside tuple (0) names only a port at
   * rest (the sync's bulk resync sends those).
   */
  REMOVED: 1,
} as const;

// Flow record offsets.
const F_PROTO = 0;
const F_STATE = 1;
const F_FLAGS = 2;
const F_KIND = 3;
const F_IADDR = 4;
const F_OADDR = 8;
const F_RADDR = 12;
const F_IPORT = 16;
const F_OPORT = 18;
const F_RPORT = 20;
const F_TTL = 24;
const F_AGE = 28;
const F_PKTS_OUT = 32;
const F_PKTS_IN = 36;
const F_BYTES_OUT = 40;
const F_BYTES_IN = 48;

/** No timeout is longer than 30 days (control/config.ts), so no flow has more left. */
const MAX_TTL = 30 * 86400;

/** FlowFlag bits a record may carry (REPLIED, INBOUND, USER, FORWARD). */
const KNOWN_FLAGS = FlowFlag.REPLIED | FlowFlag.INBOUND | FlowFlag.USER | FlowFlag.FORWARD;

/** One flow as a record holds it. Reuse one object: decodeFlow fills it in place. */
export interface FlowRecord {
  /** RecordKind. */
  kind: number;
  proto: number;
  /** TcpState for TCP; 0 or 1 (replied) for UDP and ICMP. */
  state: number;
  /** FlowFlag bits. */
  flags: number;
  iaddr: number;
  iport: number;
  oaddr: number;
  oport: number;
  raddr: number;
  rport: number;
  /** Seconds the flow has left: it is alive while ttl >= 0 (FlowTable: now <= expires). */
  ttl: number;
  /**
   * FLOW: seconds since its mapping was made, as far as the table knows it (0 = unknown).
   * REMOVED: seconds since its outside port was freed.
   */
  age: number;
  pktsOut: number;
  pktsIn: number;
  bytesOut: number;
  bytesIn: number;
}

export function newFlowRecord(): FlowRecord {
  return {
    kind: RecordKind.FLOW,
    proto: 0,
    state: 0,
    flags: 0,
    iaddr: 0,
    iport: 0,
    oaddr: 0,
    oport: 0,
    raddr: 0,
    rport: 0,
    ttl: 0,
    age: 0,
    pktsOut: 0,
    pktsIn: 0,
    bytesOut: 0,
    bytesIn: 0,
  };
}

/** Seconds since the mapping of flow `f` was made, if the table keeps that (mapping log). */
function mappingAge(table: FlowTable, f: number, now: number): number {
  if (!table.keepsRemovalLog) return 0;
  if (table.endpointIndependent) {
    const m = table.mappingOf(f);
    return m < 0 ? 0 : Math.max(0, now - table.maps.created[m]);
  }
  return Math.max(0, now - table.fCreated[f]);
}

/**
 * Write live flow `f` as a FLOW_RECORD_BYTES record at `off`. Returns false (writing nothing)
 * when the slot is free or the flow has already expired at `now`.
 */
export function encodeFlow(table: FlowTable, f: number, now: number, v: DataView, off: number) {
  const proto = table.proto(f);
  const exp = table.expires(f);
  if (proto === 0 || exp < now) return false;
  v.setUint8(off + F_PROTO, proto);
  v.setUint8(off + F_STATE, table.state(f));
  v.setUint8(off + F_FLAGS, table.flags(f));
  v.setUint8(off + F_KIND, RecordKind.FLOW);
  v.setUint32(off + F_IADDR, table.iaddr(f), true);
  v.setUint32(off + F_OADDR, table.oaddr(f), true);
  v.setUint32(off + F_RADDR, table.raddr(f), true);
  v.setUint16(off + F_IPORT, table.iport(f), true);
  v.setUint16(off + F_OPORT, table.oport(f), true);
  v.setUint16(off + F_RPORT, table.rport(f), true);
  v.setUint16(off + 22, 0, true);
  v.setUint32(off + F_TTL, exp - now, true);
  v.setUint32(off + F_AGE, mappingAge(table, f, now), true);
  v.setUint32(off + F_PKTS_OUT, table.pktsOut(f), true);
  v.setUint32(off + F_PKTS_IN, table.pktsIn(f), true);
  v.setFloat64(off + F_BYTES_OUT, table.bytesOut(f), true);
  v.setFloat64(off + F_BYTES_IN, table.bytesIn(f), true);
  v.setFloat64(off + 56, 0, true);
  return true;
}

/**
 * Write a RecordKind.REMOVED record at `off`: the flow (proto, inside addr:port, remote addr:port)
 * on (NAT addr, port) ended, and that port was freed `age` seconds ago (it rests, RFC 6888 REQ-8,
 * unless another flow still holds it). An inside tuple of zeros names only the resting port.
 */
export function encodeRemoval(
  v: DataView,
  off: number,
  proto: number,
  iaddr: number,
  iport: number,
  oaddr: number,
  oport: number,
  raddr: number,
  rport: number,
  age: number,
): void {
  for (let i = 0; i < FLOW_RECORD_BYTES; i += 4) v.setUint32(off + i, 0, true);
  v.setUint8(off + F_PROTO, proto);
  v.setUint8(off + F_KIND, RecordKind.REMOVED);
  v.setUint32(off + F_IADDR, iaddr >>> 0, true);
  v.setUint32(off + F_OADDR, oaddr >>> 0, true);
  v.setUint32(off + F_RADDR, raddr >>> 0, true);
  v.setUint16(off + F_IPORT, iport, true);
  v.setUint16(off + F_OPORT, oport, true);
  v.setUint16(off + F_RPORT, rport, true);
  v.setUint32(off + F_AGE, Math.max(0, Math.floor(age)) >>> 0, true);
}

/**
 * Read the record at `off` into `into`. Returns null when it is a possible flow, else why not
 * (the caller counts it and goes on). The caller checks that FLOW_RECORD_BYTES are there.
 */
export function decodeFlow(v: DataView, off: number, into: FlowRecord): string | null {
  const proto = v.getUint8(off + F_PROTO);
  const state = v.getUint8(off + F_STATE);
  const flags = v.getUint8(off + F_FLAGS);
  const kind = v.getUint8(off + F_KIND);
  into.kind = kind;
  into.proto = proto;
  into.state = state;
  into.flags = flags;
  into.iaddr = v.getUint32(off + F_IADDR, true);
  into.oaddr = v.getUint32(off + F_OADDR, true);
  into.raddr = v.getUint32(off + F_RADDR, true);
  into.iport = v.getUint16(off + F_IPORT, true);
  into.oport = v.getUint16(off + F_OPORT, true);
  into.rport = v.getUint16(off + F_RPORT, true);
  into.ttl = v.getUint32(off + F_TTL, true);
  into.age = v.getUint32(off + F_AGE, true);
  into.pktsOut = v.getUint32(off + F_PKTS_OUT, true);
  into.pktsIn = v.getUint32(off + F_PKTS_IN, true);
  into.bytesOut = v.getFloat64(off + F_BYTES_OUT, true);
  into.bytesIn = v.getFloat64(off + F_BYTES_IN, true);
  if (kind !== RecordKind.FLOW && kind !== RecordKind.REMOVED) return "kind";
  if (proto !== Proto.TCP && proto !== Proto.UDP && proto !== Proto.ICMP) return "protocol";
  if (kind === RecordKind.REMOVED) return into.age > MAX_TTL ? "rest time" : null;
  if (proto === Proto.TCP ? state >= TCP_STATE_NAMES.length : state > 1) return "state";
  if ((flags & ~KNOWN_FLAGS) !== 0) return "flags";
  if (proto === Proto.ICMP && into.rport !== 0) return "icmp port";
  if (into.ttl > MAX_TTL) return "lifetime";
  if (
    !(into.bytesOut >= 0 && into.bytesIn >= 0 && into.bytesOut < 2 ** 53 && into.bytesIn < 2 ** 53)
  )
    return "byte counters";
  return null;
}

/**
 * Put a decoded flow into `table` at `now` (expiry now + ttl) with its counters: the one way a
 * flow that exists elsewhere (a state file, the active of an HA pair) enters a table. A flow the
 * table already holds (same inside tuple and outside endpoint) is brought up to the record's
 * state, expiry and counters. Returns the flow id or an ADOPT_* code (see FlowTable.adopt).
 */
export function applyFlow(table: FlowTable, r: FlowRecord, now: number): number {
  const f = table.adopt(
    r.proto,
    r.iaddr,
    r.iport,
    r.oaddr,
    r.oport,
    r.raddr,
    r.rport,
    r.state,
    r.flags,
    now + r.ttl,
    now,
  );
  if (f < 0) return f;
  table.setCounters(f, r.pktsOut, r.bytesOut, r.pktsIn, r.bytesIn);
  if (table.keepsRemovalLog && r.age > 0) {
    const created = Math.max(0, now - r.age);
    if (table.endpointIndependent) {
      const m = table.mappingOf(f);
      // The mapping's first restored flow sets its age; later ones share the mapping.
      if (m >= 0 && table.maps.created[m] === now) table.maps.created[m] = created;
    } else if (table.fCreated[f] === now) {
      table.fCreated[f] = created;
    }
  }
  return f;
}

/**
 * Apply a RecordKind.REMOVED record at `now`: remove the flow if the table holds it, then let its
 * outside port rest for what is left of the sender's rest time if nothing here holds the port
 * (the table may never have had the flow: made and ended between two syncs). A port already
 * resting here keeps its own, later, release time: never shorter than the sender's.
 */
export function applyRemoval(table: FlowTable, r: FlowRecord, now: number): void {
  if (r.iaddr !== 0) {
    const f = table.lookupInside(r.proto, r.iaddr, r.iport, r.raddr, r.rport, now);
    if (f >= 0) table.remove(f, now);
  }
  const a = table.natAddressIndex(r.oaddr);
  if (a >= 0) table.ports.restoreResting(a, protoSlot(r.proto), r.oport, now - r.age);
}

/**
 * Named counters saved with the table and put back at restore, so `_total` series go on where
 * they were. The caller decides which (gauges follow from the restored flows and are left out).
 */
export interface CounterSet {
  read(): [string, number][];
  /** Put back a saved value; false for a name this version does not know (it is skipped). */
  write(name: string, value: number): boolean;
}

/** The numeric fields of `obj` as counters named prefix + field, except those in `skip`. */
export function fieldCounters(
  prefix: string,
  obj: object,
  skip: readonly string[] = [],
): CounterSet {
  const o = obj as Record<string, unknown>;
  const names = Object.keys(o).filter((k) => typeof o[k] === "number" && !skip.includes(k));
  return {
    read: () => names.map((k) => [prefix + k, o[k] as number]),
    write(name, value) {
      if (!name.startsWith(prefix)) return false;
      const k = name.slice(prefix.length);
      if (!names.includes(k)) return false;
      o[k] = value;
      return true;
    },
  };
}

/** Several counter sets as one (names must not collide: give each its own prefix). */
export function counterSets(...sets: CounterSet[]): CounterSet {
  return {
    read: () => sets.flatMap((c) => c.read()),
    write: (name, value) => sets.some((c) => c.write(name, value)),
  };
}

/** The table's own counters that a restore adjusts for what did not come back. */
export interface TableCounters {
  flowsCreated: number;
  flowsRemoved: number;
  mappingsCreated: number;
  mappingsRemoved: number;
  idleTimeouts: number;
}

const EMPTY = new Uint8Array(0);

/** Slots (flows, mappings, hosts) a writer slice looks at, at most. */
const SLICE_SLOTS = 4096;

/**
 * The whole table as body bytes, one slice per next() call (null once done). Each slice is a
 * complete section, so the concatenation of the slices is the body restoreTable reads. `now` is
 * read per slice (a checkpoint spread over several event-loop turns sees time move).
 */
export class SnapshotWriter {
  private phase = 0;
  private cursor = 0;
  /** Flow records written. */
  flows = 0;
  /** Bytes of body written. */
  bytes = 0;

  constructor(
    private readonly table: FlowTable,
    private readonly counters: CounterSet,
    private readonly now: () => number,
  ) {}

  /** The next slice; empty when a bounded amount of work found nothing to write; null at the end. */
  next(): Uint8Array | null {
    for (let empty = 0; empty < 8; empty++) {
      const out = this.step();
      if (out === undefined) continue;
      if (out !== null) this.bytes += out.byteLength;
      return out;
    }
    return EMPTY;
  }

  /** One slice, undefined to go on to the next phase, null when everything is written. */
  private step(): Uint8Array | null | undefined {
    const t = this.table;
    const now = this.now();
    switch (this.phase) {
      case 0: {
        const end = Math.min(t.capacity, this.cursor + SLICE_SLOTS);
        let n = 0;
        for (let f = this.cursor; f < end; f++) if (t.proto(f) !== 0) n++;
        const buf = new Uint8Array(SECTION_HEADER + n * FLOW_RECORD_BYTES);
        const v = new DataView(buf.buffer);
        let k = 0;
        for (let f = this.cursor; f < end && k < n; f++) {
          if (encodeFlow(t, f, now, v, SECTION_HEADER + k * FLOW_RECORD_BYTES)) k++;
        }
        this.cursor = end;
        if (end >= t.capacity) this.advance();
        this.flows += k;
        return k === 0 ? undefined : section(buf, SectionTag.FLOWS, k, FLOW_RECORD_BYTES);
      }
      case 1: {
        // Traffic of ended flows of each mapping: only the mapping log reads it.
        if (!t.keepsRemovalLog || !t.endpointIndependent) {
          this.advance();
          return undefined;
        }
        const cap = t.maps.proto.length;
        const end = Math.min(cap, this.cursor + SLICE_SLOTS);
        let n = 0;
        for (let m = this.cursor; m < end; m++) if (t.maps.proto[m] !== 0) n++;
        const buf = new Uint8Array(SECTION_HEADER + n * MAPPING_BYTES);
        const v = new DataView(buf.buffer);
        let o = SECTION_HEADER;
        for (let m = this.cursor; m < end; m++) {
          if (t.maps.proto[m] === 0) continue;
          v.setUint8(o, t.maps.proto[m]);
          v.setUint16(o + 2, t.maps.iport[m], true);
          v.setUint32(o + 4, t.maps.iaddr[m], true);
          v.setFloat64(o + 8, t.maps.bytesOut[m], true);
          v.setFloat64(o + 16, t.maps.bytesIn[m], true);
          o += MAPPING_BYTES;
        }
        this.cursor = end;
        if (end >= cap) this.advance();
        return n === 0 ? undefined : section(buf, SectionTag.MAPPINGS, n, MAPPING_BYTES);
      }
      case 2: {
        // One (NAT address, protocol) group of resting ports per slice.
        const groups = t.pool.size * PROTO_SLOTS;
        if (this.cursor >= groups) {
          this.advance();
          return undefined;
        }
        const a = Math.floor(this.cursor / PROTO_SLOTS);
        const pi = this.cursor % PROTO_SLOTS;
        this.cursor++;
        const found: number[] = [];
        const seen = new Set<number>();
        t.ports.forEachResting(a, pi, (port, freedAt) => {
          if (seen.has(port)) return;
          seen.add(port);
          found.push(port, freedAt);
        });
        const n = found.length / 2;
        if (n === 0) return undefined;
        const buf = new Uint8Array(SECTION_HEADER + n * RESTING_BYTES);
        const v = new DataView(buf.buffer);
        const proto = PROTOCOLS[pi]?.number ?? 0;
        for (let i = 0; i < n; i++) {
          const o = SECTION_HEADER + i * RESTING_BYTES;
          v.setUint32(o, t.pool.addrs[a], true);
          v.setUint8(o + 4, proto);
          v.setUint16(o + 6, found[2 * i] ?? 0, true);
          v.setUint32(o + 8, Math.max(0, now - (found[2 * i + 1] ?? 0)), true);
        }
        return section(buf, SectionTag.RESTING, n, RESTING_BYTES);
      }
      case 3: {
        const h = t.hosts;
        const end = Math.min(h.slots, this.cursor + SLICE_SLOTS);
        let n = 0;
        for (let s = this.cursor; s < end; s++) if (h.flows[s] !== 0) n++;
        const buf = new Uint8Array(SECTION_HEADER + n * HOST_BYTES);
        const v = new DataView(buf.buffer);
        let o = SECTION_HEADER;
        for (let s = this.cursor; s < end; s++) {
          if (h.flows[s] === 0) continue;
          v.setUint32(o, h.addr[s], true);
          v.setFloat64(o + 8, h.pktsOut[s], true);
          v.setFloat64(o + 16, h.pktsIn[s], true);
          v.setFloat64(o + 24, h.bytesOut[s], true);
          v.setFloat64(o + 32, h.bytesIn[s], true);
          o += HOST_BYTES;
        }
        this.cursor = end;
        if (end >= h.slots) this.advance();
        return n === 0 ? undefined : section(buf, SectionTag.HOSTS, n, HOST_BYTES);
      }
      case 4: {
        const h = t.hosts;
        const buf = new Uint8Array(SECTION_HEADER + DEPARTED_BYTES);
        const v = new DataView(buf.buffer);
        v.setFloat64(SECTION_HEADER, h.departedPktsOut, true);
        v.setFloat64(SECTION_HEADER + 8, h.departedPktsIn, true);
        v.setFloat64(SECTION_HEADER + 16, h.departedBytesOut, true);
        v.setFloat64(SECTION_HEADER + 24, h.departedBytesIn, true);
        this.advance();
        return section(buf, SectionTag.DEPARTED, 1, DEPARTED_BYTES);
      }
      case 5: {
        const all = this.counters.read();
        const names = all.map((c) => c[0]);
        const values = all.map((c) => c[1]);
        const buf = new Uint8Array(SECTION_HEADER + names.length * COUNTER_BYTES);
        const v = new DataView(buf.buffer);
        for (let i = 0; i < names.length; i++) {
          const o = SECTION_HEADER + i * COUNTER_BYTES;
          const name = names[i] ?? "";
          for (let j = 0; j < name.length && j < COUNTER_NAME; j++)
            buf[o + j] = name.charCodeAt(j) & 0x7f;
          v.setFloat64(o + COUNTER_NAME, values[i] ?? 0, true);
        }
        this.advance();
        return section(buf, SectionTag.COUNTERS, names.length, COUNTER_BYTES);
      }
      default:
        return null;
    }
  }

  private advance(): void {
    this.phase++;
    this.cursor = 0;
  }
}

function section(buf: Uint8Array, tag: number, count: number, size: number): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setUint32(0, tag, true);
  v.setUint32(4, count, true);
  return buf.subarray(0, SECTION_HEADER + count * size);
}

/** The whole body in one buffer (tests, and a caller that does not need slices). */
export function snapshotTable(table: FlowTable, counters: CounterSet, now: number): Uint8Array {
  const w = new SnapshotWriter(table, counters, () => now);
  const parts: Uint8Array[] = [];
  for (let p = w.next(); p !== null; p = w.next()) parts.push(p);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

/** What restoreTable did. */
export interface RestoreReport {
  /** Flow records in the body. */
  records: number;
  /** Flows now in the table. */
  flows: number;
  /** Records whose lifetime ran out in the time that passed (dropped, counted as idle timeouts). */
  expired: number;
  /** Records refused by the table: full, or in conflict with a flow restored before. */
  refused: number;
  /** Records with an impossible field (skipped), by the first one's reason. */
  invalid: number;
  invalidReason: string | null;
  restingPorts: number;
  hosts: number;
  counters: number;
}

/**
 * Check a body's structure: every section has a known tag and fits. Returns null or why not.
 * Touches nothing.
 */
export function checkBody(body: Uint8Array): string | null {
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let o = 0;
  let n = 0;
  while (o < body.byteLength) {
    if (body.byteLength - o < SECTION_HEADER)
      return `section ${n} at byte ${o}: header cut short (${body.byteLength - o} bytes)`;
    const tag = v.getUint32(o, true);
    const count = v.getUint32(o + 4, true);
    const size = RECORD_BYTES[tag];
    if (size === undefined) return `section ${n} at byte ${o}: unknown tag ${tag}`;
    const len = count * size;
    if (len > body.byteLength - o - SECTION_HEADER)
      return `section ${n} at byte ${o}: ${count} records of ${size} bytes do not fit in the ${body.byteLength - o - SECTION_HEADER} bytes left`;
    if (tag === SectionTag.DEPARTED && count !== 1)
      return `section ${n} at byte ${o}: ${count} departed-traffic records (expected 1)`;
    o += SECTION_HEADER + len;
    n++;
  }
  return null;
}

/**
 * Restore a body into an empty `table` (its counters `stats`, the saved `counters`) at `now`, `elapsed` seconds after it was
 * written (the time nobody held the table): lifetimes and rest times are shortened by that much,
 * and a flow whose lifetime ran out is not restored. Returns the report, or why the body was
 * refused (then the table is untouched). Never throws on any input.
 */
export function restoreTable(
  table: FlowTable,
  stats: TableCounters,
  counters: CounterSet,
  body: Uint8Array,
  now: number,
  elapsed: number,
): RestoreReport | string {
  if (table.active !== 0) return "the table is not empty";
  const bad = checkBody(body);
  if (bad !== null) return bad;
  const gone = Math.max(0, Math.floor(elapsed));
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const r: RestoreReport = {
    records: 0,
    flows: 0,
    expired: 0,
    refused: 0,
    invalid: 0,
    invalidReason: null,
    restingPorts: 0,
    hosts: 0,
    counters: 0,
  };
  const rec = newFlowRecord();
  const invalid = (why: string) => {
    r.invalid++;
    r.invalidReason ??= why;
  };
  // Flows first (they make the mappings and take the ports), then what hangs off them, then the
  // counters, which overwrite what adopt() counted.
  const resting: { a: number; pi: number; port: number; freedAt: number }[] = [];
  const hostRecs: number[] = [];
  const mappingRecs: number[] = [];
  const counterRecs: number[] = [];
  let departed = -1;
  forEachRecord(body, v, (tag, o) => {
    switch (tag) {
      case SectionTag.FLOWS: {
        r.records++;
        const why = decodeFlow(v, o, rec);
        if (why !== null) return invalid(why);
        if (rec.ttl < gone) {
          r.expired++;
          return;
        }
        if (rec.kind !== RecordKind.FLOW) return invalid("kind");
        // A second record of a flow restored before (a fuzzy snapshot): the first one stays.
        if (table.lookupInside(rec.proto, rec.iaddr, rec.iport, rec.raddr, rec.rport, now) >= 0) {
          r.refused++;
          return;
        }
        rec.ttl -= gone;
        if (rec.age > 0) rec.age += gone;
        const f = applyFlow(table, rec, now);
        if (f >= 0) r.flows++;
        else if (f === ADOPT_FULL || f === ADOPT_CONFLICT) r.refused++;
        else invalid("not a NAT address or forward of this configuration");
        return;
      }
      case SectionTag.RESTING: {
        const a = table.natAddressIndex(v.getUint32(o, true));
        const proto = v.getUint8(o + 4);
        if (a < 0 || (proto !== Proto.TCP && proto !== Proto.UDP && proto !== Proto.ICMP))
          return invalid("resting port");
        const age = v.getUint32(o + 8, true) + gone;
        resting.push({
          a,
          pi: protoSlot(proto),
          port: v.getUint16(o + 6, true),
          freedAt: now - age,
        });
        return;
      }
      case SectionTag.HOSTS:
        hostRecs.push(o);
        return;
      case SectionTag.MAPPINGS:
        mappingRecs.push(o);
        return;
      case SectionTag.DEPARTED:
        departed = o;
        return;
      case SectionTag.COUNTERS:
        counterRecs.push(o);
        return;
    }
  });
  // Oldest release first, as the allocator's ring wants them; a port in use again is skipped.
  resting.sort((x, y) => x.freedAt - y.freedAt);
  for (const p of resting)
    if (table.ports.restoreResting(p.a, p.pi, p.port, p.freedAt)) r.restingPorts++;
  const h = table.hosts;
  for (const o of hostRecs) {
    const addr = v.getUint32(o, true);
    const vals = [8, 16, 24, 32].map((k) => v.getFloat64(o + k, true));
    if (!vals.every((x) => x >= 0 && x < 2 ** 53)) {
      invalid("host traffic");
      continue;
    }
    // A host none of whose flows came back: addBytes() counts its traffic as departed.
    if (h.find(addr) >= 0) r.hosts++;
    h.addBytes(addr, vals[0] ?? 0, vals[2] ?? 0, vals[1] ?? 0, vals[3] ?? 0);
  }
  if (table.keepsRemovalLog && table.endpointIndependent) {
    for (const o of mappingRecs) {
      const proto = v.getUint8(o);
      const m = table.findMapping(proto, v.getUint32(o + 4, true), v.getUint16(o + 2, true));
      if (m < 0) continue;
      const bo = v.getFloat64(o + 8, true);
      const bi = v.getFloat64(o + 16, true);
      if (bo >= 0 && bi >= 0 && bo < 2 ** 53 && bi < 2 ** 53) {
        table.maps.bytesOut[m] = bo;
        table.maps.bytesIn[m] = bi;
      }
    }
  }
  if (departed >= 0) {
    const vals = [0, 8, 16, 24].map((k) => v.getFloat64(departed + k, true));
    if (vals.every((x) => x >= 0 && x < 2 ** 53)) {
      h.departedPktsOut += vals[0] ?? 0;
      h.departedPktsIn += vals[1] ?? 0;
      h.departedBytesOut += vals[2] ?? 0;
      h.departedBytesIn += vals[3] ?? 0;
    }
  }
  for (const o of counterRecs) {
    let name = "";
    for (let j = 0; j < COUNTER_NAME; j++) {
      const c = body[o + j] ?? 0;
      if (c === 0) break;
      name += String.fromCharCode(c);
    }
    const value = v.getFloat64(o + COUNTER_NAME, true);
    if (value >= 0 && value < 2 ** 53 && counters.write(name, value)) r.counters++;
  }
  if (r.counters > 0) {
    // The saved counters describe the old table; what did not come back has ended.
    stats.idleTimeouts += r.expired;
    stats.flowsRemoved = Math.max(stats.flowsRemoved, stats.flowsCreated - table.active);
    const live = table.endpointIndependent ? table.mappings : table.active;
    stats.mappingsRemoved = Math.max(stats.mappingsRemoved, stats.mappingsCreated - live);
  }
  return r;
}

function forEachRecord(body: Uint8Array, v: DataView, fn: (tag: number, off: number) => void) {
  let o = 0;
  while (o + SECTION_HEADER <= body.byteLength) {
    const tag = v.getUint32(o, true);
    const count = v.getUint32(o + 4, true);
    const size = RECORD_BYTES[tag] ?? 0;
    o += SECTION_HEADER;
    for (let i = 0; i < count; i++) fn(tag, o + i * size);
    o += count * size;
  }
}
