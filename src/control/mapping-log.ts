/**
 * The mapping log of RFC 6888 §4 (REQ-12): one JSON line when a NAT mapping is created and one
 * when it is removed, for operators who must answer "who had this outside address and port at
 * that time". Fields: time (wall clock, ISO 8601), event ("create" | "remove"), proto, inside and
 * outside address:port (ICMP: the echo identifier), and on remove the mapping's duration in
 * seconds and its bytes each way. The destination is left out unless logDestinations is set:
 * REQ-12 warns that logging destinations turns a NAT log into a record of who talked to whom.
 *
 * Lines come from the flow table's hooks (FlowHooks), so there is one per mapping, never one per
 * packet. They are gathered in memory and handed to the stream every 200 ms or every 64 KiB, and
 * the stream writes asynchronously: no synchronous write per mapping. If the destination falls
 * more than 8 MiB behind, lines are dropped and counted rather than letting memory grow.
 * On shutdown the live mappings are removed and logged (reason "shutdown"), so every create line
 * has its remove line.
 */
import { closeSync, createWriteStream, openSync } from "node:fs";
import type { Writable } from "node:stream";
import type { Logger } from "pino";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";
import { protocolName } from "../base/protocols.js";
import type { FlowHooks, FlowTable } from "../conntrack/table.js";
import { formatIpv4 } from "../wire/addr.js";
import type { ControlSettings } from "./config.js";

const FLUSH_MS = 200;
const FLUSH_BYTES = 64 * 1024;
const MAX_BEHIND = 8 * 1024 * 1024;

/** The protocol's name for log lines and the control socket (base/protocols.ts). */
export const protoName = protocolName;

export interface MappingLogOptions {
  sink: Writable;
  /** End the sink on close (files yes, stdout no). */
  ownsSink: boolean;
  /** Include the remote address:port (RFC 6888 REQ-12: off by default). */
  destinations: boolean;
  /** Wall clock in ms (tests pass a fixed one). */
  wallClock?: () => number;
  log?: Logger;
  /**
   * The outside address as the internet sees it (shared-address.ts shownAddress): in
   * shared-address mode the shared address, not the internal one the table holds. Absent = as is.
   */
  outsideAddress?: (addr: number) => number;
}

export class MappingLog {
  /** Lines handed to the sink. */
  lines = 0;
  /** Lines dropped because the sink was too far behind or failed. */
  dropped = 0;
  readonly hooks: FlowHooks;
  private pending: string[] = [];
  private pendingBytes = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private failed = false;
  private closing = false;
  private ended = false;
  private closed: Promise<void> | undefined;
  private readonly wall: () => number;

  constructor(private readonly opts: MappingLogOptions) {
    this.wall = opts.wallClock ?? Date.now;
    opts.sink.on("error", (e: Error) => {
      if (!this.failed)
        opts.log?.error(
          { err: e.message },
          "mapping log write failed; lines are dropped from now on",
        );
      this.failed = true;
    });
    const dest = opts.destinations;
    const shown = opts.outsideAddress ?? ((a: number) => a);
    this.hooks = {
      mappingCreated: (proto, iaddr, iport, oaddr, oport, raddr, rport) => {
        const d = dest ? `,"destination":"${formatIpv4(raddr)}:${rport}"` : "";
        this.push(
          `{"time":"${this.time()}","event":"create","proto":"${protoName(proto)}","inside":"${formatIpv4(iaddr)}:${iport}","outside":"${formatIpv4(shown(oaddr))}:${oport}"${d}}\n`,
        );
      },
      mappingRemoved: (
        proto,
        iaddr,
        iport,
        oaddr,
        oport,
        raddr,
        rport,
        now,
        createdAt,
        bytesOut,
        bytesIn,
      ) => {
        const d = dest ? `,"destination":"${formatIpv4(raddr)}:${rport}"` : "";
        const why = this.closing ? `,"reason":"shutdown"` : "";
        this.push(
          `{"time":"${this.time()}","event":"remove","proto":"${protoName(proto)}","inside":"${formatIpv4(iaddr)}:${iport}","outside":"${formatIpv4(shown(oaddr))}:${oport}"${d},"duration":${Math.max(0, now - createdAt)},"bytesOut":${bytesOut},"bytesIn":${bytesIn}${why}}\n`,
        );
      },
    };
  }

  private time(): string {
    return new Date(this.wall()).toISOString();
  }

  private push(line: string): void {
    if (this.failed || this.ended || this.opts.sink.writableLength > MAX_BEHIND) {
      this.dropped++;
      return;
    }
    this.pending.push(line);
    this.pendingBytes += line.length;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Hand the gathered lines to the sink in one write. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const n = this.pending.length;
    const chunk = this.pending.join("");
    this.pending = [];
    this.pendingBytes = 0;
    if (this.failed) {
      this.dropped += n;
      return;
    }
    this.opts.sink.write(chunk);
    this.lines += n;
  }

  /**
   * Log the removal of every live mapping of `table` (the daemon is stopping, the data path is
   * already stopped), flush, and close a file sink. Idempotent.
   */
  close(table?: FlowTable, nowSec?: number): Promise<void> {
    this.closed ??= (async () => {
      if (table && nowSec !== undefined) {
        this.closing = true;
        table.forEach((f) => {
          table.remove(f, nowSec);
        });
      }
      this.flush();
      this.ended = true;
      const sink = this.opts.sink;
      await new Promise<void>((resolve) => {
        if (this.opts.ownsSink) {
          sink.end(() => resolve());
          sink.once("error", () => resolve());
        } else if (sink.writableNeedDrain) sink.once("drain", () => resolve());
        else resolve();
      });
    })();
    return this.closed;
  }
}

/** The mapping log the settings ask for, or undefined when mappingLog is off. */
export function openMappingLog(
  c: ControlSettings,
  log?: Logger,
  outsideAddress?: (addr: number) => number,
): MappingLog | undefined {
  const m = c.mappingLog;
  if (m.kind === "off") return undefined;
  if (m.kind === "stdout")
    return new MappingLog({
      sink: process.stdout,
      ownsSink: false,
      destinations: c.logDestinations,
      log,
      outsideAddress,
    });
  let fd: number;
  try {
    // Open now, so a bad path fails the start instead of the first mapping.
    fd = openSync(m.path, "a", 0o640);
  } catch (e) {
    throw new TunnatError(
      ErrorCode.Control,
      `cannot open the mapping log ${m.path}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}; choose another --mapping-log PATH, "stdout" or "off"`,
    );
  }
  try {
    const sink = createWriteStream(m.path, { fd, flags: "a" });
    return new MappingLog({
      sink,
      ownsSink: true,
      destinations: c.logDestinations,
      log,
      outsideAddress,
    });
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}
