/**
 * pino JSON logs on stdout (docs/architecture.md §Threading). Nothing here is called per packet: the data path
 * counts, and the control plane logs events (start, stop, reload, failures).
 *
 * Under systemd, stdout is a journald stream, which would file every line at priority 6 (info).
 * When stdout is that stream ($JOURNAL_STREAM names its device and inode, systemd.exec(5)), each
 * line starts with a syslog priority prefix ("<4>" for warn), which journald strips and stores as
 * PRIORITY= (SyslogLevelPrefix=yes, journald's default): `journalctl -u tunnat -p warning` then
 * shows warnings and worse, and `journalctl -o cat` still prints plain JSON. Anywhere else
 * (a terminal, docker, a pipe) the lines are plain JSON.
 */
import { fstatSync } from "node:fs";
import { type DestinationStream, type Logger, pino } from "pino";
import type { LogLevel } from "./config.js";

export type { Logger };

export interface LoggerOptions {
  level?: LogLevel;
  /** Where JSON lines go; default stdout (fd 1). Tests pass a stream. */
  destination?: NodeJS.WritableStream;
  /** Prefix lines with "<priority>" for journald; default: when stdout is the journal. */
  journal?: boolean;
}

/** pino level number -> syslog priority (RFC 5424 §6.2.1): fatal crit, error err, warn warning. */
export function syslogPriority(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

/**
 * True when file descriptor `fd` is the journal stream systemd connected ($JOURNAL_STREAM is
 * "DEV:INODE" of it). Compared, not just tested for presence: a child whose stdout was redirected
 * inherits the variable but not the stream.
 */
export function isJournalStream(
  env: Record<string, string | undefined> = process.env,
  fd = 1,
): boolean {
  const v = env.JOURNAL_STREAM;
  if (!v) return false;
  const [dev, ino] = v.split(":");
  try {
    const st = fstatSync(fd, { bigint: true });
    return dev !== undefined && ino !== undefined && `${st.dev}` === dev && `${st.ino}` === ino;
  } catch {
    return false;
  }
}

/**
 * A pino destination that writes each line with its syslog priority in front. pino fills
 * `lastLevel` before every write on a stream that asks for metadata (as pino.multistream does).
 */
function journalPrefixed(dest: DestinationStream): DestinationStream {
  const s = {
    [Symbol.for("pino.metadata")]: true,
    lastLevel: 30,
    write(line: string) {
      dest.write(`<${syslogPriority(s.lastLevel)}>${line}`);
    },
  };
  return s;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const options = { name: "tunnat", level: opts.level ?? "info", base: { pid: process.pid } };
  // Synchronous writes to fd 1: a daemon that is about to exit on a fatal error must not lose the
  // line that says why (pino.destination({sync: true})).
  const dest: DestinationStream = opts.destination ?? pino.destination({ dest: 1, sync: true });
  const journal = opts.journal ?? (opts.destination === undefined && isJournalStream());
  return pino(options, journal ? journalPrefixed(dest) : dest);
}
