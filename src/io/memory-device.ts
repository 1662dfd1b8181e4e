/**
 * A Device in memory, for tests (like smoltcp's phy::Loopback): packets are queued with inject(),
 * delivered as one batch by flush(), and every packet written is recorded, as a copy, in `sent`.
 * This device allocates freely; only the TUN device is held to the no-allocation rule.
 */

import type { Device } from "./device.js";
import { VNET_HDR_LEN } from "./device.js";

/** The TUN device's slot size, so code under test sees the same arena layout. */
const MEMORY_SLOT_SIZE = 65_600;

export interface MemoryDeviceOptions {
  name?: string;
  vnetHdr?: boolean;
  slots?: number;
  slotSize?: number;
}

export class MemoryDevice implements Device {
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly slots: number;
  readonly slotSize: number;
  readonly buffer: Uint8Array;
  readonly lengths: Int32Array;
  /** Bytes in front of the IP header of every slot (the virtio_net_hdr, or 0). */
  readonly headroom: number;
  /** Every packet written, in order, copied out of its slot. */
  readonly sent: Uint8Array[] = [];
  /** Number of write() calls, so a test can check that a batch went out in one call. */
  writeCalls = 0;

  #queue: Uint8Array[] = [];
  #onBatch: ((count: number) => void) | undefined;
  #closed = false;

  constructor(opts: MemoryDeviceOptions = {}) {
    this.name = opts.name ?? "mem0";
    this.vnetHdr = opts.vnetHdr ?? false;
    this.slots = opts.slots ?? 64;
    this.slotSize = opts.slotSize ?? MEMORY_SLOT_SIZE;
    this.headroom = this.vnetHdr ? VNET_HDR_LEN : 0;
    this.buffer = new Uint8Array(this.slots * this.slotSize);
    this.lengths = new Int32Array(this.slots);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Packets injected and not yet delivered. */
  get pending(): number {
    return this.#queue.length;
  }

  start(onBatch: (count: number) => void, _onError?: (err: Error) => void): void {
    if (this.#closed) throw new Error(`device ${this.name} is closed`);
    if (this.#onBatch !== undefined) throw new Error(`device ${this.name}: start() called twice`);
    this.#onBatch = onBatch;
  }

  /** Queue one packet (with its virtio_net_hdr when vnetHdr is set) for the next flush(). */
  inject(bytes: Uint8Array): void {
    if (bytes.length > this.slotSize) {
      throw new RangeError(
        `packet of ${bytes.length} bytes exceeds the slot size ${this.slotSize}`,
      );
    }
    this.#queue.push(bytes.slice());
  }

  /**
   * Deliver the queued packets as batches of at most `slots` packets, one onBatch call each, like
   * the TUN device draining a full arena. Returns the number of packets delivered.
   */
  flush(): number {
    const onBatch = this.#onBatch;
    if (onBatch === undefined) throw new Error(`device ${this.name}: flush() before start()`);
    let delivered = 0;
    while (this.#queue.length > 0 && !this.#closed) {
      const n = Math.min(this.#queue.length, this.slots);
      for (let i = 0; i < n; i++) {
        const p = this.#queue[i];
        this.buffer.set(p, i * this.slotSize);
        this.lengths[i] = p.length;
      }
      this.#queue.splice(0, n);
      delivered += n;
      onBatch(n);
    }
    return delivered;
  }

  write(count: number): number {
    if (this.#closed) return 0;
    this.writeCalls++;
    const n = Math.min(count, this.slots);
    let written = 0;
    for (let i = 0; i < n; i++) {
      const len = this.lengths[i];
      if (len <= 0) continue;
      const off = i * this.slotSize;
      this.sent.push(this.buffer.slice(off, off + Math.min(len, this.slotSize)));
      written++;
    }
    return written;
  }

  close(): void {
    this.#closed = true;
    this.#queue.length = 0;
  }
}
