/**
 * Address-dependent filtering needs one question answered per unmatched inbound packet: has this
 * mapping a flow to that remote address (any port)? The flow indexes cannot say (their key holds
 * the remote port), so in that mode the table keeps this multiset of (mapping, remote address)
 * with a count of flows. Open addressing, linear probing, backward-shift deletion.
 *
 * It is sized for the common case, not the worst one. When it is full a pair is not recorded and
 * packets for it are filtered as address-and-port-dependent would: stricter, never looser.
 */
import { hashPair } from "./hash.js";

export class RemoteSet {
  private readonly mask: number;
  private readonly maxEntries: number;
  /** Mapping id + 1; 0 = empty slot. */
  readonly key: Int32Array;
  readonly raddr: Uint32Array;
  readonly count: Uint32Array;
  size = 0;

  constructor(
    slots: number,
    private readonly seed: number,
  ) {
    this.mask = slots - 1;
    this.maxEntries = (slots * 3) >>> 2;
    this.key = new Int32Array(slots);
    this.raddr = new Uint32Array(slots);
    this.count = new Uint32Array(slots);
  }

  has(mapping: number, raddr: number): boolean {
    const k = mapping + 1;
    let s = hashPair(this.seed, k, raddr) & this.mask;
    for (;;) {
      const v = this.key[s];
      if (v === 0) return false;
      if (v === k && this.raddr[s] === raddr) return true;
      s = (s + 1) & this.mask;
    }
  }

  add(mapping: number, raddr: number): void {
    const k = mapping + 1;
    let s = hashPair(this.seed, k, raddr) & this.mask;
    for (;;) {
      const v = this.key[s];
      if (v === 0) break;
      if (v === k && this.raddr[s] === raddr) {
        this.count[s]++;
        return;
      }
      s = (s + 1) & this.mask;
    }
    if (this.size >= this.maxEntries) return;
    this.key[s] = k;
    this.raddr[s] = raddr;
    this.count[s] = 1;
    this.size++;
  }

  remove(mapping: number, raddr: number): void {
    const k = mapping + 1;
    const mask = this.mask;
    let i = hashPair(this.seed, k, raddr) & mask;
    for (;;) {
      const v = this.key[i];
      if (v === 0) return;
      if (v === k && this.raddr[i] === raddr) break;
      i = (i + 1) & mask;
    }
    if (--this.count[i] > 0) return;
    this.size--;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const v = this.key[j];
      if (v === 0) break;
      const h = hashPair(this.seed, v, this.raddr[j]) & mask;
      if (i <= j ? i < h && h <= j : i < h || h <= j) continue;
      this.key[i] = v;
      this.raddr[i] = this.raddr[j];
      this.count[i] = this.count[j];
      i = j;
    }
    this.key[i] = 0;
  }

  memoryBytes(): number {
    return this.key.byteLength + this.raddr.byteLength + this.count.byteLength;
  }
}
