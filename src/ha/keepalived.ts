/**
 * keepalived's state, read from its notify FIFO (`vrrp_notify_fifo` in global_defs): keepalived
 * writes a line per transition, `INSTANCE "inside" MASTER 150`, and tunnat follows it without a
 * process started per transition (a notify script that runs `tunnat ha role` costs a Node.js
 * start, hundreds of milliseconds on a loaded machine, inside the failover time).
 *
 * The FIFO is opened read-write and non-blocking, so the open never waits for keepalived and the
 * read side never sees an end of file when keepalived restarts. Lines that arrive together (the
 * transitions keepalived wrote while tunnat was not running, read at once after a restart) count
 * only by their last state: a stale MASTER followed by FAULT must not make tunnat announce the
 * addresses for a moment.
 */
import { execFile } from "node:child_process";
import { constants, existsSync, lstatSync, openSync } from "node:fs";
import { Socket } from "node:net";

export interface FifoReader {
  close(): void;
}

/** The keepalived state of `instance` (any instance when undefined) in a line, or null. */
export function parseFifoLine(line: string, instance?: string): string | null {
  const m = /^INSTANCE "([^"]*)" (MASTER|BACKUP|FAULT|STOP|DELETED)\b/.exec(line.trim());
  if (!m) return null;
  if (instance !== undefined && m[1] !== instance) return null;
  return m[2] === "DELETED" ? "STOP" : (m[2] ?? null);
}

async function mkfifo(path: string): Promise<void> {
  await new Promise<void>((resolve, reject) =>
    execFile("mkfifo", ["-m", "0600", path], (e) => (e ? reject(e) : resolve())),
  );
}

export async function readKeepalivedFifo(
  path: string,
  instance: string | undefined,
  onState: (state: string) => void,
): Promise<FifoReader> {
  if (!existsSync(path)) await mkfifo(path);
  if (!lstatSync(path).isFIFO()) throw new Error(`${path} exists and is not a FIFO`);
  const fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  const sock = new Socket({ fd, readable: true, writable: false });
  sock.setEncoding("utf8");
  let buf = "";
  sock.on("data", (d: string) => {
    buf += d;
    const lines = buf.split("\n");
    buf = lines.pop() ?? "";
    let last: string | null = null;
    for (const l of lines) last = parseFifoLine(l, instance) ?? last;
    if (last !== null) onState(last);
  });
  sock.on("error", () => undefined);
  return { close: () => sock.destroy() };
}
