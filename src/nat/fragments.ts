/**
 * Fragment state (RFC 4787 REQ-14, RFC 7857 §3.6, RFC 6864).
 *
 * Only the first fragment carries the transport header, so the translation chosen for it is
 * remembered under (src, dst, protocol, IP ID) and applied to the fragments that follow. The cache
 * is direct-mapped and fixed in size: a collision replaces the older chain, whose later fragments
 * are then treated as if no first fragment had come (held, then dropped on expiry) instead of
 * being sent untranslated. Fragments that come before their first fragment wait in the
 * FragmentStash below.
 *
 * RFC 6864 §5.3.1 / RFC 7857 §3.6: two inside hosts may fragment datagrams with the same IP ID to
 * the same destination; after translation they share a source address, so the NAT gives each
 * fragmented datagram a fresh ID, the same for all of its fragments.
 */

const SLOTS = 4096;
const MASK = SLOTS - 1;
/** Seconds a chain is remembered (Linux ipfrag_time is 30 s). */
const FRAGMENT_TIMEOUT = 30;

export class FragmentCache {
  private readonly keySrc = new Uint32Array(SLOTS);
  private readonly keyDst = new Uint32Array(SLOTS);
  /** proto << 16 | ipId, or 0xffffffff for an empty slot. */
  private readonly keyProtoId = new Uint32Array(SLOTS).fill(0xffffffff);
  private readonly expires = new Uint32Array(SLOTS);
  /** The translated address (source outbound, destination inbound). */
  readonly newAddr = new Uint32Array(SLOTS);
  /** The translated IP ID. */
  readonly newId = new Uint16Array(SLOTS);
  private nextId: number;

  constructor(private readonly seed: number) {
    this.nextId = seed & 0xffff;
  }

  private slot(src: number, dst: number, protoId: number): number {
    let h = Math.imul(src ^ this.seed, 0x9e3779b1);
    h = Math.imul(h ^ dst ^ (h >>> 15), 0x85ebca6b);
    h = Math.imul(h ^ protoId ^ (h >>> 13), 0xc2b2ae35);
    return (h ^ (h >>> 16)) & MASK;
  }

  /**
   * Remember the translation of a first fragment. Returns the slot; its newId is the ID to write
   * (a fresh one unless `keepId`, which inbound chains use: their destinations are distinct hosts).
   */
  put(
    src: number,
    dst: number,
    proto: number,
    ipId: number,
    addr: number,
    keepId: boolean,
    now: number,
  ): number {
    const pid = ((proto << 16) | ipId) >>> 0;
    const s = this.slot(src, dst, pid);
    this.keySrc[s] = src;
    this.keyDst[s] = dst;
    this.keyProtoId[s] = pid;
    this.expires[s] = now + FRAGMENT_TIMEOUT;
    this.newAddr[s] = addr;
    if (keepId) {
      this.newId[s] = ipId;
    } else {
      this.nextId = (this.nextId + 1) & 0xffff;
      this.newId[s] = this.nextId;
    }
    return s;
  }

  /** The slot holding the chain of a later fragment, or -1. */
  get(src: number, dst: number, proto: number, ipId: number, now: number): number {
    const pid = ((proto << 16) | ipId) >>> 0;
    const s = this.slot(src, dst, pid);
    if (
      this.keyProtoId[s] !== pid ||
      this.keySrc[s] !== src ||
      this.keyDst[s] !== dst ||
      this.expires[s]! < now
    ) {
      return -1;
    }
    return s;
  }
}

/**
 * Out-of-order fragments (RFC 4787 REQ-14: a NAT MUST accept them). A non-first fragment that
 * arrives before its first fragment cannot be translated yet (only the first carries the ports),
 * so it is copied here and translated when the first fragment creates the chain's state. The
 * stash is one preallocated arena of fixed entries; nothing is allocated per packet.
 *
 * Bounds (RFC 4787 REQ-14a: resist fragment DoS): at most STASH_ENTRIES fragments and
 * STASH_MAX_BYTES bytes are held at once, at most STASH_PER_DATAGRAM per datagram, each at most
 * FRAGMENT_HOLD_MAX_BYTES long, and each for at most FRAGMENT_HOLD_SECONDS. A fragment that does
 * not fit is dropped (FragmentStashFull); a held one whose first fragment never comes is dropped
 * when it expires (FragmentNoState). A flood of orphan fragments can therefore fill the stash for
 * a few seconds, costing only other out-of-order fragments their hold, never unfragmented traffic.
 */

/** Fragments held at once. */
export const STASH_ENTRIES = 64;
/** Largest fragment held (IP total length): the 9001-byte EC2 jumbo MTU fits. */
export const FRAGMENT_HOLD_MAX_BYTES = 9216;
/**
 * Bytes held at once. Below the arena size (64 × 9216) on purpose: with jumbo fragments the
 * entry count alone would allow 576 KiB to be released into one batch's write.
 */
export const STASH_MAX_BYTES = 256 * 1024;
/** Fragments held per datagram: a 64 KiB datagram is 45 fragments at 1500 bytes, but a flood of
 * one key must not take the whole stash. */
export const STASH_PER_DATAGRAM = 16;
/**
 * Seconds a fragment is held. Linux's ipfrag_time (30 s) and RFC 791's 15 s suggestion are for
 * the reassembling end host; a NAT only bridges reordering in the path, which is a matter of
 * milliseconds. A first fragment 5 s late is lost (and the sender's retry is a new datagram with a
 * new IP ID), while every extra second lets an orphan-fragment flood keep the stash full longer.
 */
export const FRAGMENT_HOLD_SECONDS = 5;

const FREE = 0;
const HELD = 1;
const READY = 2;

export class FragmentStash {
  /** Entry i's bytes start at i * FRAGMENT_HOLD_MAX_BYTES. */
  readonly arena = new Uint8Array(STASH_ENTRIES * FRAGMENT_HOLD_MAX_BYTES);
  readonly len = new Int32Array(STASH_ENTRIES);
  /** 1 when the fragment was going out (inside -> outside), 0 inbound. */
  readonly outbound = new Uint8Array(STASH_ENTRIES);
  private readonly state = new Uint8Array(STASH_ENTRIES);
  private readonly keySrc = new Uint32Array(STASH_ENTRIES);
  private readonly keyDst = new Uint32Array(STASH_ENTRIES);
  private readonly keyProtoId = new Uint32Array(STASH_ENTRIES);
  private readonly heldAt = new Uint32Array(STASH_ENTRIES);
  /** Free entries, a stack. */
  private readonly free = new Int32Array(STASH_ENTRIES);
  private nFree = STASH_ENTRIES;
  /** Translated entries waiting to be sent, a FIFO ring. */
  private readonly ready = new Int32Array(STASH_ENTRIES);
  private readyHead = 0;
  private nReady = 0;
  /** Entries HELD (not READY). */
  private nHeld = 0;
  /** Bytes in HELD and READY entries. */
  private bytes = 0;

  constructor() {
    for (let i = 0; i < STASH_ENTRIES; i++) this.free[i] = STASH_ENTRIES - 1 - i;
  }

  /** Fragments held and waiting for their first fragment. */
  get held(): number {
    return this.nHeld;
  }

  /** Translated fragments waiting to be sent. */
  get pending(): number {
    return this.nReady;
  }

  /**
   * Copy the fragment at buf[p, p+len) in. Returns false (nothing held) when a bound is reached;
   * the caller runs expire() first so that expired entries do not count against the bounds.
   */
  hold(
    buf: Uint8Array,
    p: number,
    len: number,
    src: number,
    dst: number,
    proto: number,
    ipId: number,
    outbound: boolean,
    now: number,
  ): boolean {
    if (len > FRAGMENT_HOLD_MAX_BYTES || this.nFree === 0) return false;
    if (this.bytes + len > STASH_MAX_BYTES) return false;
    const pid = ((proto << 16) | ipId) >>> 0;
    const dir = outbound ? 1 : 0;
    if (this.count(src, dst, pid, dir) >= STASH_PER_DATAGRAM) return false;
    const e = this.free[--this.nFree]!;
    this.state[e] = HELD;
    this.keySrc[e] = src;
    this.keyDst[e] = dst;
    this.keyProtoId[e] = pid;
    this.outbound[e] = dir;
    this.heldAt[e] = now;
    this.len[e] = len;
    const a = this.arena;
    const base = e * FRAGMENT_HOLD_MAX_BYTES;
    for (let i = 0; i < len; i++) a[base + i] = buf[p + i]!;
    this.nHeld++;
    this.bytes += len;
    return true;
  }

  private count(src: number, dst: number, pid: number, dir: number): number {
    if (this.nHeld === 0) return 0;
    let n = 0;
    for (let e = 0; e < STASH_ENTRIES; e++) {
      if (
        this.state[e] === HELD &&
        this.keyProtoId[e] === pid &&
        this.keySrc[e] === src &&
        this.keyDst[e] === dst &&
        this.outbound[e] === dir
      ) {
        n++;
      }
    }
    return n;
  }

  /** Whether fragments of this datagram are held. */
  has(src: number, dst: number, proto: number, ipId: number, outbound: boolean): boolean {
    if (this.nHeld === 0) return false;
    return this.count(src, dst, ((proto << 16) | ipId) >>> 0, outbound ? 1 : 0) > 0;
  }

  /**
   * The next held entry of this datagram at or after entry `from`, or -1. The caller translates
   * it in place (at `e * FRAGMENT_HOLD_MAX_BYTES` in `arena`) and then calls markReady or drop.
   */
  next(
    from: number,
    src: number,
    dst: number,
    proto: number,
    ipId: number,
    outbound: boolean,
  ): number {
    const pid = ((proto << 16) | ipId) >>> 0;
    const dir = outbound ? 1 : 0;
    for (let e = from; e < STASH_ENTRIES; e++) {
      if (
        this.state[e] === HELD &&
        this.keyProtoId[e] === pid &&
        this.keySrc[e] === src &&
        this.keyDst[e] === dst &&
        this.outbound[e] === dir
      ) {
        return e;
      }
    }
    return -1;
  }

  /** A held entry was translated: queue it for output. */
  markReady(e: number): void {
    this.state[e] = READY;
    this.nHeld--;
    this.ready[(this.readyHead + this.nReady) % STASH_ENTRIES] = e;
    this.nReady++;
  }

  /** Free a held entry without sending it. */
  drop(e: number): void {
    this.nHeld--;
    this.release(e);
  }

  /**
   * Copy the oldest queued fragment to buf at off and free its entry. Returns its length, or 0.
   * The caller provides room for FRAGMENT_HOLD_MAX_BYTES.
   */
  take(buf: Uint8Array, off: number): number {
    if (this.nReady === 0) return 0;
    const e = this.ready[this.readyHead]!;
    this.readyHead = (this.readyHead + 1) % STASH_ENTRIES;
    this.nReady--;
    const n = this.len[e]!;
    const a = this.arena;
    const base = e * FRAGMENT_HOLD_MAX_BYTES;
    for (let i = 0; i < n; i++) buf[off + i] = a[base + i]!;
    this.release(e);
    return n;
  }

  /** Free held entries older than FRAGMENT_HOLD_SECONDS. Returns how many were freed. */
  expire(now: number): number {
    if (this.nHeld === 0) return 0;
    let n = 0;
    for (let e = 0; e < STASH_ENTRIES; e++) {
      if (this.state[e] === HELD && now - this.heldAt[e]! >= FRAGMENT_HOLD_SECONDS) {
        this.drop(e);
        n++;
      }
    }
    return n;
  }

  private release(e: number): void {
    this.state[e] = FREE;
    this.bytes -= this.len[e]!;
    this.free[this.nFree++] = e;
  }
}
