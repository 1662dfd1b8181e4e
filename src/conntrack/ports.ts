/**
 * Outside addresses and ports.
 *
 * NatPool: the NAT addresses, a set with O(1) membership (hairpin test) and paired pooling — an
 * inside host always leaves from the same NAT address (RFC 4787 REQ-2, RFC 6888 REQ-2, RFC 7857
 * §3.4 across protocols), chosen by a seeded hash of its address.
 *
 * PortAllocator: one Int32 slot per (NAT address, protocol, port). The slot says who holds the
 * port and, once freed, when:
 *   v > 0   in use: the mapping id + 1 (endpoint-independent mapping), or the number of flows
 *           using it (per-destination mapping, where a port is shared across destinations)
 *   v == 0  free: never used, or rested
 *   v < 0   freed at second -(v + 1); resting for `portReuseDelay` s (RFC 6888 REQ-8)
 * The choice follows Linux's masquerade (nf_nat_l4proto_unique_tuple) with RFC 4787's wishes:
 * keep the inside port when free; else a random free port of its class (< 1024 / >= 1024,
 * REQ-3a) and parity (REQ-4) within the configured range, falling back to the other parity, then
 * to the other class (RFC 6056 §3.3.1 "Algorithm 1": a random point, then the next free port).
 * A resting port is taken only when no other port is free: the one resting longest. ICMP echo
 * identifiers use the whole 0..65535 space with no class (parity is picked at random).
 *
 * Every allocation, release and take costs a bounded amount of work, however full the range is
 * (issue 8: the former walk over the range cost up to 65,535 probes per new flow once a flood had
 * left every port resting, ~400 µs per insert, which stalled the data path). Per (address,
 * protocol) group it keeps:
 * - bitmaps of the free and of the in-use ports, one per parity (bit = port >> 1), each with a
 *   summary word per 32 words, so "the next free port after a random point" reads at most
 *   ~70 words; and counts per (class, parity) quarter, so an empty quarter costs one read;
 * - the resting ports in release order (a ring): the head is the longest-resting port (the last
 *   resort), and ports whose rest is over move back to the free bitmap a few at a time, from the
 *   head, on each allocate and release (after a burst of releases, a rested port may wait a few
 *   allocations in that backlog; meanwhile it is not offered as the inside port's own).
 * In per-destination mode the inside port is kept when its outside 5-tuple with this remote is
 * free, even if the port is in use; otherwise a free port, then a port in use whose 5-tuple is
 * free (at most MAX_TUPLE_PROBES looked at, from a random point), then a resting one.
 * Cost: 144 KiB per group, 432 KiB per NAT address, on top of the 768 KiB of slots.
 */
import { PROTO_SLOTS, PROTOCOLS } from "../base/protocols.js";
import { hashWord, indexSlots, type Prng } from "./hash.js";

export class NatPool {
  /** The NAT addresses in configuration order; an address's index is its position here. */
  readonly addrs: Uint32Array;
  private readonly keys: Uint32Array;
  private readonly vals: Int32Array;
  private readonly mask: number;

  constructor(
    addrs: readonly number[],
    private readonly seed: number,
  ) {
    this.addrs = Uint32Array.from(addrs, (a) => a >>> 0);
    const slots = indexSlots(Math.max(1, addrs.length));
    this.keys = new Uint32Array(slots);
    this.vals = new Int32Array(slots).fill(-1);
    this.mask = slots - 1;
    for (let i = 0; i < this.addrs.length; i++) {
      const a = this.addrs[i];
      let s = hashWord(seed, a) & this.mask;
      while (this.vals[s] >= 0 && this.keys[s] !== a) s = (s + 1) & this.mask;
      if (this.vals[s] < 0) {
        this.keys[s] = a;
        this.vals[s] = i;
      }
    }
  }

  get size(): number {
    return this.addrs.length;
  }

  /** Index of `addr` among the NAT addresses, or -1. */
  indexOf(addr: number): number {
    const a = addr >>> 0;
    let s = hashWord(this.seed, a) & this.mask;
    for (;;) {
      const v = this.vals[s];
      if (v < 0) return -1;
      if (this.keys[s] === a) return v;
      s = (s + 1) & this.mask;
    }
  }

  /** Paired pooling: the NAT address index every mapping of inside host `iaddr` uses. */
  paired(iaddr: number): number {
    const n = this.addrs.length;
    if (n <= 1) return 0;
    // A second hash with a different seed, so the choice is independent of index placement.
    return hashWord(this.seed ^ 0x5bd1e995, iaddr >>> 0) % n;
  }
}

/** Per-destination mode asks its owner whether an outside 5-tuple is free (see FlowTable). */
export interface TupleProbe {
  outsideTupleFree(port: number): boolean;
}

/**
 * A cap on flow-index probes per allocation in per-destination mode, so that a destination whose
 * ports are all taken costs a bounded amount of work per new flow (Linux caps its search at 128).
 */
export const MAX_TUPLE_PROBES = 4096;

/** Bitmap words per (group, parity): 32768 bits. */
const WORDS = 1024;
/** Summary words per (group, parity): bit w set iff bitmap word w is not zero. */
const SUMS = 32;
/** Rested ports moved back to the free bitmap per allocate or release, at most. */
const PROMOTE_BUDGET = 4;

/** Index of the lowest set bit of a non-zero int32. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class PortAllocator {
  /** Slot per (addrIndex * PROTO_SLOTS + protocol slot) << 16 | port; see the file comment for values. */
  readonly slots: Int32Array;
  /** Ports in use per (addrIndex * PROTO_SLOTS + protocol slot). */
  readonly used: Int32Array;
  /**
   * Words and entries examined by allocate(), take() and release() since construction (tests
   * and the bench count work with it; see the file comment for the bound).
   */
  examined = 0;
  private readonly lo: number;
  private readonly hi: number;
  /** Free ports: bitmap per ((group << 1) | parity), WORDS words, bit port >>> 1; summaries. */
  private readonly free: Uint32Array;
  private readonly freeSum: Uint32Array;
  /** Ports in use, the same layout (per-destination mode looks for a port to share). */
  private readonly busy: Uint32Array;
  private readonly busySum: Uint32Array;
  /** Free and in-use ports per quarter: (group << 2) | class << 1 | parity. */
  private readonly freeCount: Int32Array;
  private readonly busyCount: Int32Array;
  /** Bit-index range [qLo, qHi] of each quarter: (protocol slot << 2) | class << 1 | parity. */
  /**
   * Per protocol slot, 1 when its "ports" are a whole 16-bit identifier space with no class and
   * no configured range (ICMP echo ids), 0 for real ports (base/protocols.ts `ports`).
   */
  private readonly idSpace = Uint8Array.from(PROTOCOLS, (p) => (p.ports ? 0 : 1));
  private readonly qLo = new Int32Array(PROTO_SLOTS * 4);
  private readonly qHi = new Int32Array(PROTO_SLOTS * 4);
  /** Resting ports in release order: a ring of 65536 per group, its head and length. */
  private readonly rest: Uint16Array;
  private readonly restHead: Int32Array;
  private readonly restLen: Int32Array;
  private probes = 0;

  constructor(
    nAddrs: number,
    portLo: number,
    portHi: number,
    private readonly reuseDelay: number,
    private readonly prng: Prng,
    /** Non-null in per-destination mode: a port in use may be shared if the 5-tuple is free. */
    private readonly probe: TupleProbe | null,
  ) {
    const groups = nAddrs * PROTO_SLOTS;
    this.slots = new Int32Array(groups * 65536);
    this.used = new Int32Array(groups);
    this.lo = Math.max(1, Math.min(portLo, portHi));
    this.hi = Math.min(65535, Math.max(portLo, portHi));
    this.free = new Uint32Array(groups * 2 * WORDS);
    this.freeSum = new Uint32Array(groups * 2 * SUMS);
    this.busy = new Uint32Array(groups * 2 * WORDS);
    this.busySum = new Uint32Array(groups * 2 * SUMS);
    this.freeCount = new Int32Array(groups * 4);
    this.busyCount = new Int32Array(groups * 4);
    this.rest = new Uint16Array(groups * 65536);
    this.restHead = new Int32Array(groups);
    this.restLen = new Int32Array(groups);
    for (let pi = 0; pi < PROTO_SLOTS; pi++) {
      for (let c = 0; c < 2; c++) {
        const cLo =
          this.idSpace[pi] === 1 ? (c === 0 ? 0 : 1) : c === 0 ? this.lo : Math.max(this.lo, 1024);
        const cHi =
          this.idSpace[pi] === 1
            ? c === 0
              ? 65535
              : 0
            : c === 0
              ? Math.min(this.hi, 1023)
              : this.hi;
        for (let q = 0; q < 2; q++) {
          const first = cLo + ((cLo ^ q) & 1);
          const last = cHi - ((cHi ^ q) & 1);
          const k = (pi << 2) | (c << 1) | q;
          this.qLo[k] = first <= last ? first >>> 1 : 1;
          this.qHi[k] = first <= last ? last >>> 1 : 0;
        }
      }
    }
    for (let a = 0; a < nAddrs; a++) {
      for (let pi = 0; pi < PROTO_SLOTS; pi++) {
        const g = a * PROTO_SLOTS + pi;
        const lo = this.idSpace[pi] === 1 ? 0 : this.lo;
        const hi = this.idSpace[pi] === 1 ? 65535 : this.hi;
        for (let p = lo; p <= hi; p++) this.mark(this.free, this.freeSum, this.freeCount, g, pi, p);
      }
    }
  }

  /** Ports the allocator may hand out for a protocol slot. */
  rangeSize(pi: number): number {
    return this.idSpace[pi] === 1 ? 65536 : this.hi - this.lo + 1;
  }

  /** The slot value for (addr, proto, port). */
  get(addrIndex: number, pi: number, port: number): number {
    return this.slots[((addrIndex * PROTO_SLOTS + pi) << 16) | port];
  }

  /** Bytes held in typed arrays. */
  memoryBytes(): number {
    let n = 0;
    for (const a of [
      this.slots,
      this.used,
      this.free,
      this.freeSum,
      this.busy,
      this.busySum,
      this.freeCount,
      this.busyCount,
      this.qLo,
      this.qHi,
      this.rest,
      this.restHead,
      this.restLen,
    ]) {
      n += a.byteLength;
    }
    return n;
  }

  /**
   * Choose an outside port (or echo id) for inside port `want` on NAT address `addrIndex`.
   * Returns the port, or -1 if none is free. Does not take it (see take()).
   */
  allocate(addrIndex: number, pi: number, want: number, now: number): number {
    const g = addrIndex * PROTO_SLOTS + pi;
    const base = g << 16;
    this.probes = 0;
    this.promote(g, pi, now, PROMOTE_BUDGET);
    if (this.probe === null && this.used[g] >= this.rangeSize(pi)) return -1;
    if (this.inRange(pi, want)) {
      this.examined++;
      const v = this.slots[base | want];
      if (v === 0) return want;
      if (v > 0 && this.probe !== null) {
        this.probes++;
        if (this.probe.outsideTupleFree(want)) return want;
      }
    }
    const cls = this.idSpace[pi] === 1 || want < 1024 ? 0 : 1;
    const parity = this.idSpace[pi] === 1 ? this.prng.next() & 1 : want & 1;
    // Free ports: own class and parity, own class other parity, then the other class.
    for (let k = 0; k < 4; k++) {
      const c = k < 2 ? cls : cls ^ 1;
      const quarter = (c << 1) | ((parity ^ k) & 1);
      this.examined++;
      if (this.freeCount[(g << 2) | quarter] === 0) continue;
      const p = this.pick(this.free, this.freeSum, g, pi, quarter);
      if (p >= 0) return p;
    }
    // Per-destination mode: a port in use whose outside 5-tuple with this remote is free.
    if (this.probe !== null) {
      for (let k = 0; k < 4 && this.probes < MAX_TUPLE_PROBES; k++) {
        const c = k < 2 ? cls : cls ^ 1;
        const quarter = (c << 1) | ((parity ^ k) & 1);
        this.examined++;
        if (this.busyCount[(g << 2) | quarter] === 0) continue;
        const p = this.share(g, pi, quarter);
        if (p >= 0) return p;
      }
    }
    // RFC 6888 REQ-8: a resting port only when nothing else is free; the longest-resting one.
    return this.oldestResting(g);
  }

  /** Mark a port taken: `value` is the mapping id + 1 (EIM); per-destination counts users. */
  take(addrIndex: number, pi: number, port: number, value: number): void {
    const g = addrIndex * PROTO_SLOTS + pi;
    const i = (g << 16) | port;
    const v = this.slots[i];
    if (v > 0) {
      // Already in use: per-destination mode shares it; EIM replaces the holder (never happens).
      this.slots[i] = this.probe !== null ? v + 1 : value;
      return;
    }
    const inRange = this.inRange(pi, port);
    if (v === 0) {
      if (inRange) this.unmark(this.free, this.freeSum, this.freeCount, g, pi, port);
    } else if (this.restLen[g] > 0 && this.rest[(g << 16) | this.restHead[g]] === port) {
      // The longest-resting port (allocate's last resort) leaves the ring. A resting port taken
      // otherwise leaves a stale entry, skipped when it comes to the head.
      this.popRest(g);
    }
    this.slots[i] = this.probe !== null ? 1 : value;
    if (inRange) this.mark(this.busy, this.busySum, this.busyCount, g, pi, port);
    this.used[g]++;
  }

  /** Drop one holder of a port; when none is left the port starts resting at `now`. */
  release(addrIndex: number, pi: number, port: number, now: number): void {
    const g = addrIndex * PROTO_SLOTS + pi;
    const i = (g << 16) | port;
    const v = this.slots[i];
    if (v <= 0) return;
    if (this.probe !== null && v > 1) {
      this.slots[i] = v - 1;
      return;
    }
    this.used[g]--;
    if (this.inRange(pi, port)) this.unmark(this.busy, this.busySum, this.busyCount, g, pi, port);
    if (this.reuseDelay <= 0) {
      this.slots[i] = 0;
      if (this.inRange(pi, port)) this.mark(this.free, this.freeSum, this.freeCount, g, pi, port);
      return;
    }
    this.slots[i] = -(now + 1);
    // The ring holds each resting port once, so it cannot overflow; should a stale entry make it
    // full, its head is freed early rather than lost.
    if (this.restLen[g] === 65536) this.promote(g, pi, Number.MAX_SAFE_INTEGER, 1);
    this.rest[(g << 16) | ((this.restHead[g] + this.restLen[g]) & 0xffff)] = port;
    this.restLen[g]++;
    this.promote(g, pi, now, PROMOTE_BUDGET);
  }

  /**
   * Restore a port that was resting when the table was saved (conntrack/snapshot.ts): freed at
   * second `freedAt`. Only a free port can be put to rest; false otherwise (in use, or no rest
   * delay configured). Call in release order (oldest first): the ring keeps that order.
   */
  restoreResting(addrIndex: number, pi: number, port: number, freedAt: number): boolean {
    const g = addrIndex * PROTO_SLOTS + pi;
    const i = (g << 16) | port;
    if (this.reuseDelay <= 0 || this.slots[i] !== 0 || this.restLen[g] === 65536) return false;
    if (this.inRange(pi, port)) this.unmark(this.free, this.freeSum, this.freeCount, g, pi, port);
    this.slots[i] = -(Math.max(0, freedAt) + 1);
    this.rest[(g << 16) | ((this.restHead[g] + this.restLen[g]) & 0xffff)] = port;
    this.restLen[g]++;
    return true;
  }

  /**
   * Call fn(port, freedAt) for each resting port of (addrIndex, pi), oldest release first, from
   * the ring (its length, not the port range, bounds the work). A port released twice since it
   * left the ring may come twice; the caller keeps the first.
   */
  forEachResting(addrIndex: number, pi: number, fn: (port: number, freedAt: number) => void): void {
    const g = addrIndex * PROTO_SLOTS + pi;
    const base = g << 16;
    const head = this.restHead[g];
    for (let k = 0; k < this.restLen[g]; k++) {
      const p = this.rest[base | ((head + k) & 0xffff)];
      const v = this.slots[base | p];
      if (v < 0) fn(p, -v - 1);
    }
  }

  private inRange(pi: number, p: number): boolean {
    return this.idSpace[pi] === 1 || (p >= this.lo && p <= this.hi);
  }

  /** Set port p's bit in a bitmap and count it in its quarter. */
  private mark(
    bits: Uint32Array,
    sums: Uint32Array,
    counts: Int32Array,
    g: number,
    pi: number,
    p: number,
  ): void {
    const bq = (g << 1) | (p & 1);
    const i = p >>> 1;
    const w = bq * WORDS + (i >>> 5);
    bits[w] |= 1 << (i & 31);
    const sw = i >>> 5;
    sums[bq * SUMS + (sw >>> 5)] |= 1 << (sw & 31);
    counts[(g << 2) | (this.idSpace[pi] === 0 && p >= 1024 ? 2 : 0) | (p & 1)]++;
  }

  /** Clear port p's bit in a bitmap and uncount it. */
  private unmark(
    bits: Uint32Array,
    sums: Uint32Array,
    counts: Int32Array,
    g: number,
    pi: number,
    p: number,
  ): void {
    const bq = (g << 1) | (p & 1);
    const i = p >>> 1;
    const w = bq * WORDS + (i >>> 5);
    const x = bits[w] & ~(1 << (i & 31));
    bits[w] = x;
    if (x === 0) {
      const sw = i >>> 5;
      sums[bq * SUMS + (sw >>> 5)] &= ~(1 << (sw & 31));
    }
    counts[(g << 2) | (this.idSpace[pi] === 0 && p >= 1024 ? 2 : 0) | (p & 1)]--;
  }

  /** A random set port of a quarter (a random point, then the next set bit, wrapping). */
  private pick(
    bits: Uint32Array,
    sums: Uint32Array,
    g: number,
    pi: number,
    quarter: number,
  ): number {
    const k = (pi << 2) | quarter;
    const i0 = this.qLo[k];
    const i1 = this.qHi[k];
    if (i0 > i1) return -1;
    const bq = (g << 1) | (quarter & 1);
    const start = i0 + this.prng.below(i1 - i0 + 1);
    let x = this.nextSet(bits, sums, bq, start, i1);
    if (x < 0) x = this.nextSet(bits, sums, bq, i0, start - 1);
    return x < 0 ? -1 : (x << 1) | (quarter & 1);
  }

  /** Per-destination: from a random point, the first port in use whose 5-tuple is free. */
  private share(g: number, pi: number, quarter: number): number {
    const k = (pi << 2) | quarter;
    const i0 = this.qLo[k];
    const i1 = this.qHi[k];
    if (i0 > i1) return -1;
    const bq = (g << 1) | (quarter & 1);
    const probe = this.probe as TupleProbe;
    const start = i0 + this.prng.below(i1 - i0 + 1);
    for (let pass = 0; pass < 2; pass++) {
      const to = pass === 0 ? i1 : start - 1;
      let x = this.nextSet(this.busy, this.busySum, bq, pass === 0 ? start : i0, to);
      while (x >= 0) {
        const p = (x << 1) | (quarter & 1);
        this.probes++;
        if (probe.outsideTupleFree(p)) return p;
        if (this.probes >= MAX_TUPLE_PROBES) return -1;
        x = this.nextSet(this.busy, this.busySum, bq, x + 1, to);
      }
    }
    return -1;
  }

  /** The first set bit in [from, to] of bitmap bq, or -1; reads at most ~34 words. */
  private nextSet(
    bits: Uint32Array,
    sums: Uint32Array,
    bq: number,
    from: number,
    to: number,
  ): number {
    if (from > to) return -1;
    const wb = bq * WORDS;
    const sb = bq * SUMS;
    let w = from >>> 5;
    const wEnd = to >>> 5;
    let x = bits[wb + w] & (-1 << (from & 31));
    for (;;) {
      this.examined++;
      if (w === wEnd) x &= (2 << (to & 31)) - 1;
      if (x !== 0) return (w << 5) | ctz(x);
      if (w >= wEnd) return -1;
      // The next non-empty word after w, through the summary words.
      const from2 = w + 1;
      let s = from2 >>> 5;
      const sEnd = wEnd >>> 5;
      let y = sums[sb + s] & (-1 << (from2 & 31));
      for (;;) {
        this.examined++;
        if (s === sEnd) y &= (2 << (wEnd & 31)) - 1;
        if (y !== 0 || s >= sEnd) break;
        y = sums[sb + ++s];
      }
      if (y === 0) return -1;
      w = (s << 5) | ctz(y);
      x = bits[wb + w];
    }
  }

  /** Move up to `budget` ports whose rest is over from the head of the ring to the free bitmap. */
  private promote(g: number, pi: number, now: number, budget: number): void {
    const base = g << 16;
    for (let n = 0; n < budget && this.restLen[g] > 0; n++) {
      this.examined++;
      const p = this.rest[base | this.restHead[g]];
      const v = this.slots[base | p];
      if (v < 0) {
        if (now - (-v - 1) < this.reuseDelay) return;
        this.slots[base | p] = 0;
        if (this.inRange(pi, p)) this.mark(this.free, this.freeSum, this.freeCount, g, pi, p);
      }
      this.popRest(g);
    }
  }

  /** The longest-resting port, or -1 (stale heads, in use again, are dropped on the way). */
  private oldestResting(g: number): number {
    const base = g << 16;
    while (this.restLen[g] > 0) {
      this.examined++;
      const p = this.rest[base | this.restHead[g]];
      if (this.slots[base | p] < 0) return p;
      this.popRest(g);
    }
    return -1;
  }

  private popRest(g: number): void {
    this.restHead[g] = (this.restHead[g] + 1) & 0xffff;
    this.restLen[g]--;
  }
}
