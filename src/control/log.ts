/**
 * pino JSON logs on stdout (DESIGN.md §5). Nothing here is called per packet: the data path
 * counts, and the control plane logs events (start, stop, reload, failures).
 */
import { type Logger, pino } from "pino";
import type { LogLevel } from "./config.js";

export type { Logger };

export interface LoggerOptions {
  level?: LogLevel;
  /** Where JSON lines go; default stdout (fd 1). Tests pass a stream. */
  destination?: NodeJS.WritableStream;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const options = { name: "tunnat", level: opts.level ?? "info", base: { pid: process.pid } };
  // Synchronous writes to fd 1: a daemon that is about to exit on a fatal error must not lose the
  // line that says why (pino.destination({sync: true})).
  const dest = opts.destination ?? pino.destination({ dest: 1, sync: true });
  return pino(options, dest);
}
