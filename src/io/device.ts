/**
 * Packet I/O contract (README.md here; docs/architecture.md §Packet path). A device owns one preallocated arena of fixed-size slots and
 * an Int32Array of lengths. It fills slots 0..count-1 with packets read from the kernel and calls
 * the batch handler once per batch; the handler rewrites packets in place, sets `lengths[i]` to the
 * length to send back (0 = drop), and calls `write(count)`, which writes every slot with a
 * non-zero length in one native call. Nothing here allocates per packet.
 *
 * With `vnetHdr` set every slot starts with a 10-byte virtio_net_hdr (include/uapi/linux/virtio_net.h)
 * and lengths include it, in both directions.
 */
export interface Device {
  readonly name: string;
  readonly vnetHdr: boolean;
  /** Number of slots in the arena (the largest batch). */
  readonly slots: number;
  /** Bytes per slot: large enough for a 64 KiB GSO packet plus its virtio_net_hdr. */
  readonly slotSize: number;
  /** The arena: slot i starts at i * slotSize. */
  readonly buffer: Uint8Array;
  readonly lengths: Int32Array;
  /**
   * Start reading; `onBatch(count)` runs once per drained batch. `onError` hears of a read or write
   * error that ends the device (already classified and closed: the interface vanished, or a fatal
   * errno); without it such an error is thrown to process 'uncaughtException'.
   */
  start(onBatch: (count: number) => void, onError?: (err: Error) => void): void;
  /** Write slots 0..count-1 whose length is > 0. Returns how many were written. */
  write(count: number): number;
  /** Stop reading and close the file descriptor. Idempotent. */
  close(): void;
  /**
   * Stop reading and hand every packet already read from the kernel to the batch handler, and
   * write what it sends, before returning; what arrives after stays in the kernel's queue for
   * the next reader (a handover's successor). Only a device that reads on other threads needs
   * it; false if that could not be finished within `timeoutMs`.
   */
  quiesce?(timeoutMs: number): boolean;
}

/** Size of struct virtio_net_hdr without num_buffers. */
export const VNET_HDR_LEN = 10;
