/**
 * The table's open-addressing hash indexes: power-of-two sizes, load <= 3/4, linear probing,
 * backward-shift deletion (no tombstones), seeded hashes (hash.ts).
 */
import { hashEndpoint, hashTuple } from "./hash.js";
import { R_PORTS, R_RADDR, R_RPORT_PROTO_STATE, REC } from "./record.js";

/**
 * Open-addressing index of flow ids keyed by (proto, addr, port, raddr, rport), read from the flow
 * records: `addrWord` picks the inside or NAT address, `portShift` the inside (0) or NAT (16) port.
 */
export class TupleIndex {
  readonly slots: Int32Array;
  readonly mask: number;

  constructor(
    size: number,
    readonly seed: number,
    private readonly rec: Uint32Array,
    private readonly addrWord: number,
    private readonly portShift: number,
  ) {
    this.slots = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  find(p: number, a: number, pt: number, ra: number, rp: number): number {
    const slots = this.slots;
    const mask = this.mask;
    const rec = this.rec;
    const protoPort = (rp | (p << 16)) >>> 0;
    let i = hashTuple(this.seed, p, a, ra, pt, rp) & mask;
    for (;;) {
      const f = slots[i];
      if (f < 0) return -1;
      const b = f * REC;
      // One branch over all fields of one record: one cache line at most.
      if (
        ((rec[b + this.addrWord] ^ a) |
          (rec[b + R_RADDR] ^ ra) |
          (((rec[b + R_PORTS] >>> this.portShift) & 0xffff) ^ pt) |
          ((rec[b + R_RPORT_PROTO_STATE] & 0xffffff) ^ protoPort)) ===
        0
      ) {
        return f;
      }
      i = (i + 1) & mask;
    }
  }

  homeOf(f: number): number {
    const rec = this.rec;
    const b = f * REC;
    const w3 = rec[b + R_RPORT_PROTO_STATE];
    return (
      hashTuple(
        this.seed,
        (w3 >>> 16) & 0xff,
        rec[b + this.addrWord],
        rec[b + R_RADDR],
        (rec[b + R_PORTS] >>> this.portShift) & 0xffff,
        w3 & 0xffff,
      ) & this.mask
    );
  }

  insert(f: number): void {
    insertId(this.slots, this.mask, this.homeOf(f), f);
  }

  delete(f: number): void {
    deleteId(this.slots, this.mask, f, this);
  }
}

/** Open-addressing index of mapping ids keyed by (proto, inside addr, inside port). */
export class EndpointIndex {
  readonly slots: Int32Array;
  private readonly mask: number;

  constructor(
    size: number,
    private readonly seed: number,
    private readonly proto: Uint8Array,
    private readonly addr: Uint32Array,
    private readonly port: Uint16Array,
  ) {
    this.slots = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  find(p: number, a: number, pt: number): number {
    const slots = this.slots;
    const mask = this.mask;
    let i = hashEndpoint(this.seed, p, a, pt) & mask;
    for (;;) {
      const m = slots[i];
      if (m < 0) return -1;
      if (this.addr[m] === a && this.port[m] === pt && this.proto[m] === p) return m;
      i = (i + 1) & mask;
    }
  }

  homeOf(m: number): number {
    return hashEndpoint(this.seed, this.proto[m], this.addr[m], this.port[m]) & this.mask;
  }

  insert(m: number): void {
    insertId(this.slots, this.mask, this.homeOf(m), m);
  }

  delete(m: number): void {
    deleteId(this.slots, this.mask, m, this);
  }
}

/** Put `id` in the first empty slot from its home (linear probing). */
function insertId(slots: Int32Array, mask: number, home: number, id: number): void {
  let i = home;
  while (slots[i] >= 0) i = (i + 1) & mask;
  slots[i] = id;
}

/** Remove `id` from a linear-probing table, if present, leaving no tombstone. */
function deleteId(
  slots: Int32Array,
  mask: number,
  id: number,
  index: { homeOf(id: number): number },
): void {
  let i = index.homeOf(id);
  while (slots[i] !== id) {
    if (slots[i] < 0) return;
    i = (i + 1) & mask;
  }
  backwardShift(slots, mask, i, index);
}

/**
 * Empty slot `i` of a linear-probing table without leaving a tombstone (Knuth 6.4 Algorithm R):
 * pull each later entry of the cluster back into the hole unless that would put it before its
 * home slot.
 */
function backwardShift(
  slots: Int32Array,
  mask: number,
  hole: number,
  index: { homeOf(id: number): number },
): void {
  let i = hole;
  let j = hole;
  for (;;) {
    j = (j + 1) & mask;
    const id = slots[j];
    if (id < 0) break;
    const k = index.homeOf(id);
    if (i <= j ? i < k && k <= j : i < k || k <= j) continue;
    slots[i] = id;
    i = j;
  }
  slots[i] = -1;
}
