/**
 * Fragment state for in-order fragment translation (RFC 4787 REQ-14, RFC 7857 §3.6, RFC 6864).
 *
 * Only the first fragment carries the transport header, so the translation chosen for it is
 * remembered under (src, dst, protocol, IP ID) and applied to the fragments that follow. The cache
 * is direct-mapped and fixed in size: a collision replaces the older chain, whose later fragments
 * are then dropped and counted (FragmentNoState) instead of being sent untranslated.
 *
 * RFC 6864 §5.3.1 / RFC 7857 §3.6: two inside hosts may fragment datagrams with the same IP ID to
 * the same destination; after translation they share a source address, so the NAT gives each
 * fragmented datagram a fresh ID, the same for all of its fragments.
 */

const SLOTS = 4096;
const MASK = SLOTS - 1;
/** Seconds a chain is remembered (Linux ipfrag_time is 30 s). */
export const FRAGMENT_TIMEOUT = 30;

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
