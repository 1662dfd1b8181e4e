/**
 * Outside addresses and ports.
 *
 * NatPool: the NAT addresses, a set with O(1) membership (hairpin test) and paired pooling — an
 * inside host always leaves from the same NAT address (RFC 4787 REQ-2, RFC 6888 REQ-2, RFC 7857
 * §3.4 across protocols), chosen by a seeded hash of its address.
 *
 * PortAllocator: one Int32 slot per (NAT address, protocol, port). The slot says who holds the
 * port and, once free, when it was freed:
 *   v > 0   in use: the mapping id + 1 (endpoint-independent mapping), or the number of flows
 *           using it (per-destination mapping, where a port is shared across destinations)
 *   v == 0  never used
 *   v < 0   freed at second -(v + 1); resting for `portReuseDelay` s (RFC 6888 REQ-8)
 * The choice follows Linux's masquerade (nf_nat_l4proto_unique_tuple) with RFC 4787's wishes:
 * keep the inside port when free; else keep its class (< 1024 / >= 1024, REQ-3a) and parity
 * (REQ-4) within the configured range, starting at a random point and walking on (RFC 6056 §3.3.1
 * "Algorithm 1"), falling back to the other parity, then to the other class. A resting port is
 * taken only when no other port is free. ICMP echo identifiers use the whole 0..65535 space with
 * no class or parity.
 */
import { hashWord, indexSlots, type Prng } from "./hash.js";

/** Protocol slot: TCP 0, UDP 1, ICMP 2 (the same order as nat/stats.ts PROTO_INDEX). */
export function protoIndex(proto: number): number {
  return proto === 6 ? 0 : proto === 17 ? 1 : 2;
}

export const PROTO_SLOTS = 3;
const ICMP_SLOT = 2;

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

export class PortAllocator {
  /** Slot per (addrIndex * 3 + protoIndex) << 16 | port; see the file comment for values. */
  readonly slots: Int32Array;
  /** Ports in use per (addrIndex * 3 + protoIndex). */
  readonly used: Int32Array;
  private readonly lo: number;
  private readonly hi: number;
  private bestRest = -1;
  private bestRestAt = 0;
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
    this.slots = new Int32Array(nAddrs * PROTO_SLOTS * 65536);
    this.used = new Int32Array(nAddrs * PROTO_SLOTS);
    this.lo = Math.max(1, Math.min(portLo, portHi));
    this.hi = Math.min(65535, Math.max(portLo, portHi));
  }

  /** Ports the allocator may hand out for a protocol slot. */
  rangeSize(pi: number): number {
    return pi === ICMP_SLOT ? 65536 : this.hi - this.lo + 1;
  }

  /** The slot value for (addr, proto, port). */
  get(addrIndex: number, pi: number, port: number): number {
    return this.slots[((addrIndex * PROTO_SLOTS + pi) << 16) | port];
  }

  /**
   * Choose an outside port (or echo id) for inside port `want` on NAT address `addrIndex`.
   * Returns the port, or -1 if none is free. Does not take it (see take()).
   */
  allocate(addrIndex: number, pi: number, want: number, now: number): number {
    const g = addrIndex * PROTO_SLOTS + pi;
    const base = g << 16;
    this.bestRest = -1;
    this.probes = 0;
    if (this.probe === null && this.used[g] >= this.rangeSize(pi)) return -1;
    let r: number;
    if (pi === ICMP_SLOT) {
      if (this.ok(base, want, now)) return want;
      r = this.scan(base, 0, 65535, -1, now);
    } else {
      const lo = this.lo;
      const hi = this.hi;
      if (want >= lo && want <= hi && this.ok(base, want, now)) return want;
      const parity = want & 1;
      let cLo: number;
      let cHi: number;
      let oLo: number;
      let oHi: number;
      if (want < 1024) {
        cLo = lo;
        cHi = Math.min(hi, 1023);
        oLo = Math.max(lo, 1024);
        oHi = hi;
      } else {
        cLo = Math.max(lo, 1024);
        cHi = hi;
        oLo = lo;
        oHi = Math.min(hi, 1023);
      }
      r = this.scan(base, cLo, cHi, parity, now);
      if (r < 0) r = this.scan(base, cLo, cHi, parity ^ 1, now);
      if (r < 0) r = this.scan(base, oLo, oHi, parity, now);
      if (r < 0) r = this.scan(base, oLo, oHi, parity ^ 1, now);
    }
    // RFC 6888 REQ-8: a resting port only when nothing else is free; the longest-resting one.
    return r >= 0 ? r : this.bestRest;
  }

  /** Mark a port taken: `value` is the mapping id + 1 (EIM); per-destination counts users. */
  take(addrIndex: number, pi: number, port: number, value: number): void {
    const g = addrIndex * PROTO_SLOTS + pi;
    const i = (g << 16) | port;
    const v = this.slots[i];
    if (this.probe !== null) {
      if (v > 0) {
        this.slots[i] = v + 1;
        return;
      }
      this.slots[i] = 1;
    } else {
      this.slots[i] = value;
    }
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
    this.slots[i] = -(now + 1);
    this.used[g]--;
  }

  private ok(base: number, p: number, now: number): boolean {
    const v = this.slots[base | p];
    if (v > 0) {
      if (this.probe === null || this.probes >= MAX_TUPLE_PROBES) return false;
      this.probes++;
      return this.probe.outsideTupleFree(p);
    }
    if (v === 0) return true;
    const freedAt = -v - 1;
    if (now - freedAt >= this.reuseDelay) return true;
    if (this.bestRest < 0 || freedAt < this.bestRestAt) {
      this.bestRest = p;
      this.bestRestAt = freedAt;
    }
    return false;
  }

  /** Random start, then every port of [lo, hi] with the given parity (-1: any) once. */
  private scan(base: number, lo: number, hi: number, parity: number, now: number): number {
    if (lo > hi) return -1;
    let first = lo;
    let step = 1;
    if (parity >= 0) {
      if ((first & 1) !== parity) first++;
      step = 2;
    }
    if (first > hi) return -1;
    const count = Math.floor((hi - first) / step) + 1;
    let k = this.prng.below(count);
    for (let n = 0; n < count; n++) {
      const p = first + k * step;
      if (this.ok(base, p, now)) return p;
      if (++k === count) k = 0;
    }
    return -1;
  }
}
