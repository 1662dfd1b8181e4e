/**
 * The table state file: the flow table saved at SIGTERM (and by the periodic checkpoint), read
 * back at the next start so established connections and UDP mappings keep their outside ports
 * (docs/operations.md "Restart and upgrade").
 *
 * File layout (little-endian):
 *   0   magic "TUNNATST" (8 bytes)
 *   8   version u32 (FORMAT_VERSION)
 *   12  fingerprint length u32
 *   16  saved at: wall-clock milliseconds since the epoch, f64
 *   24  body length: low u32, high u32
 *   32  flows in the body u32, 0 u32
 *   40  SHA-256 of (fingerprint, body, bytes 0..39)
 *   72  fingerprint: the JSON text of the settings a flow's meaning depends on (NAT addresses,
 *       inside prefixes, port range, mapping and filtering modes)
 *   ..  body: conntrack/snapshot.ts sections
 *
 * Reading never throws: a missing file means a first start; a short, foreign, corrupt, newer or
 * other-configuration file is refused with the reason, and the daemon starts with an empty
 * table. Writing goes to a temporary file in the same directory, fsynced, then renamed over the
 * old one, so a reader (or a crash at any point) sees the old state or the new, never a mix.
 *
 * Time: a record holds its remaining lifetime at the save; the header holds the wall-clock time
 * of the save (the one place wall time is read, through an injected clock). The reader subtracts
 * the wall time that passed since, so a flow that expired while no daemon ran is not restored.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { dirname } from "node:path";
import { performance } from "node:perf_hooks";
import {
  type CounterSet,
  counterSets,
  fieldCounters,
  type RestoreReport,
  restoreTable,
  SnapshotWriter,
} from "../conntrack/snapshot.js";
import type { FlowTable } from "../conntrack/table.js";
import type { NatConfig } from "../nat/config.js";
import { DROP_REASON_NAMES, type NatStats } from "../nat/stats.js";
import { formatCidr, formatIpv4 } from "../wire/addr.js";

const STATE_MAGIC = "TUNNATST";
export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 72;
/** A fingerprint is a few hundred bytes; more means the header is not ours. */
const MAX_FINGERPRINT = 1 << 20;

/**
 * The counters saved with the table: every counter of NatStats by its field name, the drops by
 * reason name ("drops.<reason>"). tcpEstablishedNow is a gauge the restored flows rebuild.
 */
function savedCounters(stats: NatStats): CounterSet {
  const drops: CounterSet = {
    read: () => DROP_REASON_NAMES.map((n, i) => [`drops.${n}`, stats.drops[i] ?? 0]),
    write(name, value) {
      const i = name.startsWith("drops.") ? DROP_REASON_NAMES.indexOf(name.slice(6)) : -1;
      if (i < 0) return false;
      stats.drops[i] = value;
      return true;
    },
  };
  return counterSets(fieldCounters("", stats, ["tcpEstablishedNow"]), drops);
}

/** The settings a saved flow's meaning depends on, as canonical JSON text. */
function fingerprint(nat: NatConfig): string {
  return JSON.stringify({
    natAddresses: nat.natAddresses.map(formatIpv4),
    inside: nat.inside.map((p) => formatCidr(p)),
    ports: `${nat.portLo}-${nat.portHi}`,
    mapping: nat.mapping,
    filtering: nat.filtering,
  });
}

/** How two fingerprints differ, as "field old -> new" (for the refusal's log line). */
function fingerprintDiff(saved: string, current: string): string {
  let a: Record<string, unknown>;
  let b: Record<string, unknown>;
  try {
    a = JSON.parse(saved) as Record<string, unknown>;
    b = JSON.parse(current) as Record<string, unknown>;
    if (typeof a !== "object" || a === null) throw new Error("not an object");
  } catch {
    return "unreadable settings";
  }
  const out: string[] = [];
  for (const k of Object.keys(b)) {
    const x = JSON.stringify(a[k]);
    const y = JSON.stringify(b[k]);
    if (x !== y) out.push(`${k} ${x ?? "unset"} -> ${y}`);
  }
  return out.length ? out.join(", ") : "settings differ";
}

/** A state file read and checked: its body and when it was saved. */
export interface ReadState {
  body: Uint8Array;
  savedAtMs: number;
  flows: number;
}

/**
 * Check a state file's bytes against the current settings. Returns the body, or why the file
 * cannot be used (a sentence for the log). Never throws.
 */
export function parseStateFile(bytes: Uint8Array, nat: NatConfig): ReadState | string {
  if (bytes.byteLength < HEADER_BYTES)
    return `truncated: ${bytes.byteLength} bytes, shorter than the ${HEADER_BYTES}-byte header`;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString("latin1");
  if (magic !== STATE_MAGIC) return "not a tunnat table state file (wrong magic)";
  const version = v.getUint32(8, true);
  if (version !== FORMAT_VERSION)
    return `format version ${version}, this tunnat reads version ${FORMAT_VERSION} (written by ${version > FORMAT_VERSION ? "a newer" : "an older"} tunnat)`;
  const fpLen = v.getUint32(12, true);
  const savedAtMs = v.getFloat64(16, true);
  const bodyLen = v.getUint32(24, true) + v.getUint32(28, true) * 2 ** 32;
  const flows = v.getUint32(32, true);
  if (fpLen > MAX_FINGERPRINT) return `corrupt header: fingerprint of ${fpLen} bytes`;
  const want = HEADER_BYTES + fpLen + bodyLen;
  if (want !== bytes.byteLength)
    return want > bytes.byteLength
      ? `truncated: the header announces ${want} bytes, the file has ${bytes.byteLength}`
      : `corrupt: ${bytes.byteLength - want} bytes after the end the header announces`;
  const fpBytes = bytes.subarray(HEADER_BYTES, HEADER_BYTES + fpLen);
  const body = bytes.subarray(HEADER_BYTES + fpLen);
  const h = createHash("sha256");
  h.update(fpBytes);
  h.update(body);
  h.update(bytes.subarray(0, 40));
  const digest = h.digest();
  if (!digest.equals(bytes.subarray(40, 72))) return "corrupt: the SHA-256 checksum does not match";
  if (!Number.isFinite(savedAtMs)) return "corrupt header: save time is not a number";
  const saved = Buffer.from(fpBytes).toString("utf8");
  const current = fingerprint(nat);
  if (saved !== current)
    return `written with another configuration (${fingerprintDiff(saved, current)})`;
  return { body, savedAtMs, flows };
}

/** Build the header for a body of `bodyLen` bytes whose SHA-256 so far covers fp and body. */
function finishHeader(
  fp: Buffer,
  savedAtMs: number,
  bodyLen: number,
  flows: number,
  hash: ReturnType<typeof createHash>,
): Buffer {
  const head = Buffer.alloc(HEADER_BYTES);
  head.write(STATE_MAGIC, 0, "latin1");
  head.writeUInt32LE(FORMAT_VERSION, 8);
  head.writeUInt32LE(fp.byteLength, 12);
  head.writeDoubleLE(savedAtMs, 16);
  head.writeUInt32LE(bodyLen % 2 ** 32, 24);
  head.writeUInt32LE(Math.floor(bodyLen / 2 ** 32), 28);
  head.writeUInt32LE(flows >>> 0, 32);
  hash.update(head.subarray(0, 40));
  hash.digest().copy(head, 40);
  return head;
}

/** What a save or checkpoint wrote, and what it cost. */
export interface SaveResult {
  file: string;
  flows: number;
  bytes: number;
  /** Wall time from start to rename, ms. */
  ms: number;
  /** The longest stretch the event loop was held (encoding one slice), ms. */
  maxSliceMs: number;
  slices: number;
}

export interface SaveInput {
  file: string;
  table: FlowTable;
  stats: NatStats;
  nat: NatConfig;
  /** The table's current second. */
  now: number;
  /** Wall-clock ms since the epoch (Date.now in the daemon). */
  wallMs: number;
}

function tmpName(file: string): string {
  return `${file}.${process.pid}.tmp`;
}

/** Save the whole table at once (SIGTERM: the data path has stopped). */
export function saveTableState(s: SaveInput): SaveResult {
  const t0 = performance.now();
  mkdirSync(dirname(s.file), { recursive: true, mode: 0o700 });
  const fp = Buffer.from(fingerprint(s.nat), "utf8");
  const hash = createHash("sha256").update(fp);
  const tmp = tmpName(s.file);
  const fd = openSync(tmp, "w", 0o600);
  let done = false;
  try {
    let pos = HEADER_BYTES;
    writeSync(fd, fp, 0, fp.byteLength, pos);
    pos += fp.byteLength;
    const w = new SnapshotWriter(s.table, savedCounters(s.stats), () => s.now);
    let slices = 0;
    for (let c = w.next(); c !== null; c = w.next()) {
      hash.update(c);
      writeSync(fd, c, 0, c.byteLength, pos);
      pos += c.byteLength;
      slices++;
    }
    const head = finishHeader(fp, s.wallMs, w.bytes, w.flows, hash);
    writeSync(fd, head, 0, head.byteLength, 0);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, s.file);
    syncDir(s.file);
    done = true;
    const ms = performance.now() - t0;
    return { file: s.file, flows: w.flows, bytes: pos, ms, maxSliceMs: ms, slices };
  } finally {
    if (!done) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
      rmSync(tmp, { force: true });
    }
  }
}

/**
 * Save the table while the data path runs: one slice of the table is encoded per event-loop
 * turn and written by libuv's thread pool, so a packet batch waits at most one slice. The
 * result is a fuzzy snapshot: each flow as it was when its slice was taken (restoreTable copes
 * with the odd pair that changed in between). Concurrent calls are the caller's to prevent.
 */
export async function checkpointTableState(s: SaveInput): Promise<SaveResult> {
  const t0 = performance.now();
  mkdirSync(dirname(s.file), { recursive: true, mode: 0o700 });
  const fp = Buffer.from(fingerprint(s.nat), "utf8");
  const hash = createHash("sha256").update(fp);
  const tmp = tmpName(s.file);
  const fh = await open(tmp, "w", 0o600);
  let done = false;
  try {
    let pos = HEADER_BYTES;
    await fh.write(fp, 0, fp.byteLength, pos);
    pos += fp.byteLength;
    const w = new SnapshotWriter(s.table, savedCounters(s.stats), () => s.now);
    let maxSliceMs = 0;
    let slices = 0;
    for (;;) {
      const a = performance.now();
      const c = w.next();
      if (c !== null) hash.update(c);
      maxSliceMs = Math.max(maxSliceMs, performance.now() - a);
      if (c === null) break;
      slices++;
      await fh.write(c, 0, c.byteLength, pos);
      pos += c.byteLength;
      // Let a packet batch in between slices even when the write finished at once.
      await new Promise<void>((r) => setImmediate(r));
    }
    const head = finishHeader(fp, s.wallMs, w.bytes, w.flows, hash);
    await fh.write(head, 0, head.byteLength, 0);
    await fh.sync();
    await fh.close();
    renameSync(tmp, s.file);
    syncDir(s.file);
    done = true;
    return {
      file: s.file,
      flows: w.flows,
      bytes: pos,
      ms: performance.now() - t0,
      maxSliceMs,
      slices,
    };
  } finally {
    if (!done) {
      await fh.close().catch(() => undefined);
      rmSync(tmp, { force: true });
    }
  }
}

/** fsync the directory so the rename itself survives a power cut. */
function syncDir(file: string): void {
  try {
    const d = openSync(dirname(file), "r");
    try {
      fsyncSync(d);
    } finally {
      closeSync(d);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename is still atomic.
  }
}

/** The outcome of loading the state file at start. */
export type LoadResult =
  | { kind: "none" }
  | { kind: "refused"; why: string }
  | {
      kind: "restored";
      report: RestoreReport;
      ms: number;
      savedAtMs: number;
      /** Seconds between the save and now (wall clock; 0 if the clock went back). */
      elapsed: number;
      clockWentBack: boolean;
    };

export interface LoadInput {
  file: string;
  table: FlowTable;
  stats: NatStats;
  nat: NatConfig;
  now: number;
  wallMs: number;
  /** File reader (tests); readFileSync by default. */
  readFile?: (file: string) => Uint8Array;
}

/** Read, check and restore the state file into an empty table. Never throws. */
export function loadTableState(l: LoadInput): LoadResult {
  const t0 = performance.now();
  let bytes: Uint8Array;
  try {
    bytes = (l.readFile ?? readFileSync)(l.file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { kind: "none" };
    return { kind: "refused", why: `cannot read it (${code ?? String(e)})` };
  }
  try {
    const parsed = parseStateFile(bytes, l.nat);
    if (typeof parsed === "string") return { kind: "refused", why: parsed };
    const back = l.wallMs < parsed.savedAtMs;
    const elapsed = back ? 0 : (l.wallMs - parsed.savedAtMs) / 1000;
    const report = restoreTable(
      l.table,
      l.stats,
      savedCounters(l.stats),
      parsed.body,
      l.now,
      elapsed,
    );
    if (typeof report === "string") return { kind: "refused", why: `corrupt body: ${report}` };
    return {
      kind: "restored",
      report,
      ms: performance.now() - t0,
      savedAtMs: parsed.savedAtMs,
      elapsed,
      clockWentBack: back,
    };
  } catch (e) {
    // Not expected (every field is checked), but a bad file must never stop the start.
    return { kind: "refused", why: `unreadable (${e instanceof Error ? e.message : String(e)})` };
  }
}
