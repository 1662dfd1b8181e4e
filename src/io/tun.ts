/**
 * The TUN device through the addon (the folder's contract is in README.md here). Opening with
 * IFF_VNET_HDR and offloads (TSO, USO where the kernel has it, Linux 6.2+) is what lets the kernel
 * hand over 64 KiB GSO super-packets; see native-notes/README.md for the kernel side.
 */

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { ErrorCode, TunnatError } from "../base/errors.js";
import type { Device } from "./device.js";
import { VNET_HDR_LEN } from "./device.js";
import {
  classifyErrno,
  devTunHint,
  EINTR,
  EINVAL,
  EIO,
  type ErrnoError,
  errnoError,
  isErrnoError,
} from "./errno.js";
import { packageRoot } from "./package-root.js";

/**
 * Bytes per slot: the largest packet a TUN hands over is a 65,535-byte IPv4 GSO packet plus its
 * 10-byte virtio_net_hdr; rounded up to a multiple of 64 so every slot starts on a cache line.
 */
export const SLOT_SIZE = 65_600;
const DEFAULT_SLOTS = 64;
const MAX_SLOTS = 4096;

export interface TunOptions {
  /** Interface name (at most 15 bytes); `%d` lets the kernel pick a number. */
  name: string;
  /** Prefix every packet with a virtio_net_hdr (IFF_VNET_HDR). Default false. */
  vnetHdr?: boolean;
  /** TUNSETOFFLOAD checksum + TSO (+ USO): needs vnetHdr. Default: the value of vnetHdr. */
  offloads?: boolean;
  /** Also try UDP segmentation offload (TUN_F_USO4|USO6, Linux 6.2+). Default true. */
  uso?: boolean;
  /** IFF_MULTI_QUEUE: every openTun() with the same name adds one queue. Default false. */
  multiQueue?: boolean;
  /** Arena slots, the largest batch. Default 64. */
  slots?: number;
  /**
   * Adopt this open TUN queue fd (inherited from the previous daemon in a handover restart)
   * instead of opening one; it must be TUN `name` with the same flags.
   */
  fd?: number;
}

/** Which TUNSETOFFLOAD flags the kernel accepted. */
export interface TunOffloads {
  /** The flags word passed to TUNSETOFFLOAD (0 when offloads are off). */
  readonly flags: number;
  /** TUN_F_CSUM: packets may carry VIRTIO_NET_HDR_F_NEEDS_CSUM (partial transport checksum). */
  readonly csum: boolean;
  readonly tso4: boolean;
  readonly tso6: boolean;
  /** TUN_F_USO4|TUN_F_USO6 (the kernel takes them only together). */
  readonly uso: boolean;
}

/** Counters of the device itself; plain numbers, read at scrape time. */
interface TunStats {
  batches: number;
  packetsRead: number;
  packetsWritten: number;
  /** Writes dropped because the kernel queue was full (EAGAIN/ENOBUFS). */
  writeDropped: number;
  /** Writes the kernel refused for that packet alone (EINVAL: bad header; EIO: link down). */
  writeRejected: number;
  /** Lengths above the slot size, refused before the syscall (a bug above the device). */
  writeOversize: number;
}

/** An error that ended the device, handed to onError. */
export interface TunIoError extends ErrnoError {
  /** "gone": the interface was deleted or the fd closed; "fatal": anything else. */
  severity: "gone" | "fatal";
}

// --- the addon -------------------------------------------------------------------------------

interface NativeTun {
  readonly fd: number;
  readonly name: string;
  setOffload(flags: number): void;
  start(
    arena: Uint8Array,
    lengths: Int32Array,
    slots: number,
    slotSize: number,
    status: Int32Array,
    onBatch: ((count: number, errno: number) => void) | null,
  ): void;
  write(from: number, count: number): number;
  close(): void;
}

/** native/mq.cc: one I/O thread per TUN queue, rings in SharedArrayBuffers (src/io/queues.ts). */
export interface NativeIoQueues {
  start(): void;
  /** Hand released slots to a sleeping thread: written here if few and small, else it is woken. */
  kick(queue: number): void;
  stop(): void;
  counters(out: Float64Array): void;
  injectFault(queue: number): void;
  /** Nobody reads the queues any more (the threads still write); false if a read outlasted it. */
  pauseReads(timeoutMs: number): boolean;
  /** Wait until every slot handed back is written; false on the deadline or a thread's end. */
  awaitWritten(timeoutMs: number): boolean;
}

export interface NativeAddon {
  Tun: new (name: string, vnetHdr: boolean, multiQueue: boolean, fd?: number) => NativeTun;
  IoQueues: new (
    fds: number[],
    arenas: Uint8Array[],
    lengths: Int32Array[],
    ctl: Int32Array[],
    slots: number,
    slotSize: number,
    pollUs: number,
    onReady: () => void,
  ) => NativeIoQueues;
  /** Test of the ring from a second thread (test/unit/io/ring.test.ts). */
  ringProduce(
    arena: Uint8Array,
    lengths: Int32Array,
    ctl: Int32Array,
    slots: number,
    slotSize: number,
    count: number,
  ): void;
  ringJoin(): void;
  /** A connected AF_UNIX stream socket pair, non-blocking (test/unit/io/queue-writer.test.ts). */
  socketPair(): [number, number];
  queueConstants: {
    CTL_FILL: number;
    CTL_DONE: number;
    CTL_SLEEPING: number;
    CTL_EXIT: number;
    CTL_LEN: number;
    COUNTERS: number;
  };
  errnoName(errno: number): string;
  /** sd_notify: one datagram to NOTIFY_SOCKET (native/notify.cc); 0 or the errno. */
  notify(socketPath: string, message: string): number;
  constants: {
    TUN_F_CSUM: number;
    TUN_F_TSO4: number;
    TUN_F_TSO6: number;
    TUN_F_USO4: number;
    TUN_F_USO6: number;
    STATUS_WRITTEN: number;
    STATUS_DROPPED: number;
    STATUS_ERRNO: number;
    STATUS_INDEX: number;
    STATUS_OVERSIZE: number;
    STATUS_LEN: number;
  };
}

const ADDON_FILE = join("build", "Release", "tunnat_tun.node");
let addon: NativeAddon | undefined;

/** Path of the built addon, or undefined when it was not built. */
export function addonPath(): string | undefined {
  const root = packageRoot();
  if (root === undefined) return undefined;
  const p = join(root, ADDON_FILE);
  return existsSync(p) ? p : undefined;
}

/** Load the addon once. Throws TUNNAT_ERR_DATAPATH with the fix when it is not built. */
export function loadAddon(): NativeAddon {
  if (addon !== undefined) return addon;
  const p = addonPath();
  if (p === undefined) {
    throw new TunnatError(
      ErrorCode.Datapath,
      `the native addon ${ADDON_FILE} is not built: run \`npm rebuild\` in the tunnat package ` +
        "(needs python3, make and g++; see native-notes/README.md)",
    );
  }
  addon = createRequire(import.meta.url)(p) as NativeAddon;
  return addon;
}

// --- opening ---------------------------------------------------------------------------------

function openHint(e: ErrnoError, name: string): string {
  switch (e.code) {
    case "EBUSY":
      return `an interface named ${name} already exists and is in use (or is not a multi-queue TUN): pick another --tun name or remove it`;
    case "EINVAL":
      return `an interface named ${name} exists with other flags (TAP, vnet header or multi-queue differ): remove it or pick another name`;
    default:
      return devTunHint(e.code, e.syscall);
  }
}

/**
 * Open one TUN queue. Throws TunnatError TUNNAT_ERR_NO_TUN (cause: the errno Error, with `.code`
 * such as "EACCES" and `.errno`) when the device cannot be had, and TUNNAT_ERR_CONFIG for options
 * that contradict each other.
 */
export function openTun(opts: TunOptions): TunDevice {
  const vnetHdr = opts.vnetHdr ?? false;
  const wantOffloads = opts.offloads ?? vnetHdr;
  const slots = opts.slots ?? DEFAULT_SLOTS;
  if (wantOffloads && !vnetHdr) {
    // Without the header the kernel could not tell us a packet is a GSO super-packet.
    throw new TunnatError(ErrorCode.Config, "TUN offloads need vnetHdr: set vnetHdr: true");
  }
  if (!Number.isInteger(slots) || slots < 1 || slots > MAX_SLOTS) {
    throw new TunnatError(ErrorCode.Config, `TUN slots must be 1..${MAX_SLOTS}, got ${slots}`);
  }
  const a = loadAddon();
  let nt: NativeTun;
  try {
    const mq = opts.multiQueue ?? false;
    nt =
      opts.fd === undefined
        ? new a.Tun(opts.name, vnetHdr, mq)
        : new a.Tun(opts.name, vnetHdr, mq, opts.fd);
  } catch (e) {
    if (!isErrnoError(e)) throw e;
    throw new TunnatError(
      ErrorCode.NoTun,
      `cannot open TUN ${opts.name}: ${e.message} — ${openHint(e, opts.name)}`,
      { cause: e },
    );
  }
  try {
    const offloads = wantOffloads ? setOffloads(a, nt, opts.uso ?? true) : NO_OFFLOADS;
    return new TunDevice(a, nt, vnetHdr, opts.multiQueue ?? false, slots, offloads);
  } catch (e) {
    nt.close();
    if (!isErrnoError(e)) throw e;
    throw new TunnatError(
      ErrorCode.NoTun,
      `cannot set offloads on TUN ${nt.name}: ${e.message} — open it with offloads: false`,
      { cause: e },
    );
  }
}

const NO_OFFLOADS: TunOffloads = { flags: 0, csum: false, tso4: false, tso6: false, uso: false };

/**
 * The kernel answers EINVAL to any flag it does not know (tun.c set_offload: "gives the user a way
 * to test for new features"), so try the richest set first and fall back.
 */
function setOffloads(a: NativeAddon, nt: NativeTun, uso: boolean): TunOffloads {
  const c = a.constants;
  const base = c.TUN_F_CSUM | c.TUN_F_TSO4 | c.TUN_F_TSO6;
  const tries = uso
    ? [base | c.TUN_F_USO4 | c.TUN_F_USO6, base, c.TUN_F_CSUM]
    : [base, c.TUN_F_CSUM];
  for (const flags of tries) {
    try {
      nt.setOffload(flags);
    } catch (e) {
      if (isErrnoError(e) && e.errno === EINVAL) continue;
      throw e;
    }
    return {
      flags,
      csum: (flags & c.TUN_F_CSUM) !== 0,
      tso4: (flags & c.TUN_F_TSO4) !== 0,
      tso6: (flags & c.TUN_F_TSO6) !== 0,
      uso: (flags & c.TUN_F_USO4) !== 0,
    };
  }
  return NO_OFFLOADS;
}

// --- the device ------------------------------------------------------------------------------

/** Retries of one slot that failed with EINTR before it is counted as dropped. */
const EINTR_RETRIES = 3;

export class TunDevice implements Device {
  readonly name: string;
  readonly fd: number;
  readonly vnetHdr: boolean;
  readonly multiQueue: boolean;
  readonly slots: number;
  readonly slotSize = SLOT_SIZE;
  readonly buffer: Uint8Array;
  readonly lengths: Int32Array;
  readonly offloads: TunOffloads;
  readonly stats: TunStats = {
    batches: 0,
    packetsRead: 0,
    packetsWritten: 0,
    writeDropped: 0,
    writeRejected: 0,
    writeOversize: 0,
  };
  /** Bytes in front of the IP header of every slot (the virtio_net_hdr, or 0). */
  readonly headroom: number;

  readonly #addon: NativeAddon;
  readonly #native: NativeTun;
  /** Filled by the addon on every write: written, dropped, errno, failing index. */
  readonly #status: Int32Array;
  #started = false;
  #closed = false;
  #onError: ((err: Error) => void) | undefined;

  /** @internal use openTun() */
  constructor(
    a: NativeAddon,
    nt: NativeTun,
    vnetHdr: boolean,
    multiQueue: boolean,
    slots: number,
    offloads: TunOffloads,
  ) {
    this.#addon = a;
    this.#native = nt;
    this.name = nt.name;
    this.fd = nt.fd;
    this.vnetHdr = vnetHdr;
    this.multiQueue = multiQueue;
    this.slots = slots;
    this.offloads = offloads;
    this.headroom = vnetHdr ? VNET_HDR_LEN : 0;
    this.buffer = new Uint8Array(slots * SLOT_SIZE);
    this.lengths = new Int32Array(slots);
    this.#status = new Int32Array(a.constants.STATUS_LEN);
  }

  get closed(): boolean {
    return this.#closed;
  }

  start(onBatch: (count: number) => void, onError?: (err: Error) => void): void {
    if (this.#closed) throw this.#error(9, "start", "gone");
    if (this.#started) throw new Error(`TUN ${this.name}: start() called twice`);
    this.#started = true;
    this.#onError = onError;
    const stats = this.stats;
    // One closure for the device's lifetime: the addon calls it once per batch.
    const onNative = (count: number, errno: number): void => {
      if (count > 0) {
        stats.batches++;
        stats.packetsRead += count;
        onBatch(count);
      }
      if (errno !== 0 && !this.#closed) this.#readFailed(errno);
    };
    this.#native.start(this.buffer, this.lengths, this.slots, SLOT_SIZE, this.#status, onNative);
  }

  /**
   * Bind the arena for write() without reading: the queue's reads are done elsewhere (an I/O
   * thread, src/io/queues.ts). `onError` hears of a write error that ends the device.
   */
  startWriteOnly(onError?: (err: Error) => void): void {
    if (this.#closed) throw this.#error(9, "start", "gone");
    if (this.#started) throw new Error(`TUN ${this.name}: start() called twice`);
    this.#started = true;
    this.#onError = onError;
    this.#native.start(this.buffer, this.lengths, this.slots, SLOT_SIZE, this.#status, null);
  }

  /** An error for an errno that ended this queue, classified as gone or fatal. */
  errorFor(errno: number, syscall: string): TunIoError {
    return this.#error(errno, syscall, classifyErrno(errno) === "gone" ? "gone" : "fatal");
  }

  write(count: number): number {
    if (this.#closed || !this.#started) return 0;
    const st = this.#status;
    const c = this.#addon.constants;
    let written = this.#native.write(0, count);
    this.stats.writeDropped += st[c.STATUS_DROPPED];
    this.stats.writeOversize += st[c.STATUS_OVERSIZE];
    let errno = st[c.STATUS_ERRNO];
    let eintr = 0;
    // Rare path: one slot failed; classify it and go on after it.
    while (errno !== 0) {
      const at = st[c.STATUS_INDEX];
      let from = at + 1;
      if (errno === EINTR && eintr < EINTR_RETRIES) {
        eintr++;
        from = at;
      } else if (errno === EINVAL || errno === EIO || classifyErrno(errno) === "retry") {
        // The kernel refused this packet alone (tun_get_user: bad vnet header or IP version;
        // EIO while the link is down): one drop, not the device's end.
        this.stats.writeRejected++;
      } else {
        this.stats.packetsWritten += written;
        this.#fail(errno, "write");
        return written;
      }
      written += this.#native.write(from, count);
      this.stats.writeDropped += st[c.STATUS_DROPPED];
      this.stats.writeOversize += st[c.STATUS_OVERSIZE];
      errno = st[c.STATUS_ERRNO];
    }
    this.stats.packetsWritten += written;
    return written;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
  }

  #readFailed(errno: number): void {
    // The addon already retried EINTR and stopped at EAGAIN; what reaches here ends the device.
    if (classifyErrno(errno) === "retry") return;
    this.#fail(errno, "read");
  }

  #fail(errno: number, syscall: string): void {
    const err = this.#error(errno, syscall, classifyErrno(errno) === "gone" ? "gone" : "fatal");
    this.close();
    if (this.#onError === undefined) throw err;
    this.#onError(err);
  }

  #error(errno: number, syscall: string, severity: "gone" | "fatal"): TunIoError {
    const code = this.#addon.errnoName(errno);
    const what =
      severity === "gone"
        ? `TUN ${this.name} is gone (the interface was deleted or its fd closed)`
        : `TUN ${this.name} ${syscall} failed`;
    const err = errnoError(errno, code, syscall, what) as TunIoError;
    err.severity = severity;
    return err;
  }
}
