/**
 * Hashing and randomness for the connection tables. Everything here is allocation-free after
 * construction: the hashes are MurmurHash3's 32-bit body and finaliser over a few words, the
 * PRNG is xoshiro128** with its state in a typed array.
 *
 * The seed is drawn once per process (like the kernel's `nf_conntrack_hash_rnd`) so that an
 * outsider cannot aim packets at one probe chain; tests pin it through `NatConfig.hashSeed`.
 */

/** One MurmurHash3 round: mixes the 32-bit word `k` into the running hash `h`. */
function mix32(h: number, k: number): number {
  let x = Math.imul(k, 0xcc9e2d51);
  x = (x << 15) | (x >>> 17);
  x = Math.imul(x, 0x1b873593);
  let y = h ^ x;
  y = (y << 13) | (y >>> 19);
  return (Math.imul(y, 5) + 0xe6546b64) | 0;
}

/** MurmurHash3's finaliser: every input bit reaches every output bit. Returns a uint32. */
function fmix32(h: number): number {
  let x = h ^ (h >>> 16);
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Hash of a flow tuple: (proto, local addr, remote addr, local port, remote port). */
export function hashTuple(
  seed: number,
  proto: number,
  addr: number,
  raddr: number,
  port: number,
  rport: number,
): number {
  let h = mix32(seed ^ proto, addr);
  h = mix32(h, raddr);
  h = mix32(h, (port << 16) | rport);
  return fmix32(h ^ 12);
}

/** Hash of one endpoint: (proto, addr, port). */
export function hashEndpoint(seed: number, proto: number, addr: number, port: number): number {
  let h = mix32(seed ^ proto, addr);
  h = mix32(h, port);
  return fmix32(h ^ 8);
}

/** Hash of one 32-bit word (host addresses). */
export function hashWord(seed: number, w: number): number {
  return fmix32(mix32(seed, w) ^ 4);
}

/** Hash of two 32-bit words (address-dependent filtering pairs). */
export function hashPair(seed: number, a: number, b: number): number {
  return fmix32(mix32(mix32(seed, a), b) ^ 8);
}

/** Smallest power of two >= n (n >= 1). */
export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * Slot count for an open-addressing index that must hold `entries` keys: a power of two with a
 * load factor of at most 3/4, which keeps linear probing short (Knuth: ~2.5 probes for a hit,
 * ~8.5 for a miss at 0.75; about 1.5 and 2.5 at the 0.5 most capacities land on).
 */
export function indexSlots(entries: number): number {
  return nextPow2(Math.max(4, Math.ceil((entries * 4) / 3)));
}

/** A random uint32 from the platform CSPRNG (once per table, never per packet). */
export function randomSeed(): number {
  const a = new Uint32Array(1);
  globalThis.crypto.getRandomValues(a);
  return a[0];
}

/**
 * xoshiro128** (Blackman and Vigna): fast, 128-bit state in a Uint32Array, no allocation per
 * draw. Seeded from the CSPRNG at startup, it gives RFC 6056 §4-style unpredictable port choices
 * without a syscall per new mapping; with a pinned seed (tests) it is deterministic.
 */
export class Prng {
  private readonly s = new Uint32Array(4);

  constructor(seed: number) {
    // splitmix32 spreads one seed word over the four state words (never all zero).
    let z = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) | 0;
      let t = z ^ (z >>> 16);
      t = Math.imul(t, 0x21f0aaad);
      t ^= t >>> 15;
      t = Math.imul(t, 0x735a2d97);
      t ^= t >>> 15;
      this.s[i] = t;
    }
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  /** Next uint32. */
  next(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** Uniform-enough integer in [0, n) for n <= 2^16 (bias below 2^-16). */
  below(n: number): number {
    return Math.floor((this.next() / 4294967296) * n);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
