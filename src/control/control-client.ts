/**
 * The client side of the control socket (control-protocol.ts), for `tunnat flows` and
 * `tunnat stats`. Imports nothing of the daemon, so the CLI stays light.
 */
import { createConnection } from "node:net";
import { ErrorCode, TunnatError } from "../base/errors.js";
import type { ControlRequest } from "./control-protocol.js";

type OnLine = (obj: Record<string, unknown>) => void;

/** What the daemon's socket error means to the operator. */
function socketError(path: string, e: NodeJS.ErrnoException): TunnatError {
  if (e.code === "ENOENT" || e.code === "ECONNREFUSED")
    return new TunnatError(
      ErrorCode.NotRunning,
      `daemon not reachable at ${path} (${e.code}); is tunnat running? (--socket PATH)`,
    );
  if (e.code === "EACCES")
    return new TunnatError(
      ErrorCode.Control,
      `permission denied on ${path}: use root, or a member of the daemon's --control-socket-group (the unit's: tunnat)`,
    );
  return new TunnatError(ErrorCode.Control, `control socket ${path}: ${e.message}`);
}

/**
 * The one exchange both calls below make: connect, send `req` as one line, then split the answer
 * into lines, parse each, and call `onLine` for it, until `last` says a line was the last (then
 * resolve), the daemon closes the connection (`closed`: resolve with undefined, reject with an
 * error), `signal` aborts (resolve), or `timeoutMs` passes without traffic. An "error" line or a
 * line that is not JSON rejects with TUNNAT_ERR_CONTROL; nothing listening is
 * TUNNAT_ERR_NOT_RUNNING.
 */
function exchange(
  path: string,
  req: ControlRequest,
  onLine: OnLine,
  opts: {
    last?: (obj: Record<string, unknown>) => boolean;
    closed: () => Error | undefined;
    timeoutMs?: number;
    signal?: AbortSignal | undefined;
  },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = "";
    let done = false;
    const finish = (e?: Error) => {
      if (done) return;
      done = true;
      sock.destroy();
      if (e) reject(e);
      else resolve();
    };
    if (opts.signal) {
      if (opts.signal.aborted) return finish();
      opts.signal.addEventListener("abort", () => finish(), { once: true });
    }
    if (opts.timeoutMs !== undefined) {
      const ms = opts.timeoutMs;
      sock.setTimeout(ms, () =>
        finish(new TunnatError(ErrorCode.Control, `no answer from ${path} in ${ms} ms`)),
      );
    }
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("error", (e: NodeJS.ErrnoException) => finish(socketError(path, e)));
    sock.on("data", (d: string) => {
      buf += d;
      let nl = buf.indexOf("\n");
      while (nl >= 0 && !done) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
        if (line.trim() === "") continue;
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(line) as Record<string, unknown>;
        } catch {
          finish(new TunnatError(ErrorCode.Control, `bad answer line: ${line.slice(0, 80)}`));
          return;
        }
        if (obj.type === "error") {
          finish(new TunnatError(ErrorCode.Control, String(obj.error)));
          return;
        }
        onLine(obj);
        if (opts.last?.(obj)) finish();
      }
    });
    sock.on("close", () => finish(opts.closed()));
  });
}

/**
 * Send one request and call `onLine` for every answer line until the "end", "stats", "ha" or
 * "restart" line. Errors: TUNNAT_ERR_NOT_RUNNING when nothing listens, TUNNAT_ERR_CONTROL
 * otherwise (an error line, a bad line, no answer in `timeoutMs`, or a close before the last
 * line).
 */
export function request(
  path: string,
  req: ControlRequest,
  onLine: OnLine,
  timeoutMs = 30_000,
): Promise<void> {
  return exchange(path, req, onLine, {
    last: (obj) =>
      obj.type === "end" || obj.type === "stats" || obj.type === "ha" || obj.type === "restart",
    closed: () =>
      new TunnatError(ErrorCode.Control, `${path} closed the connection before answering`),
    timeoutMs,
  });
}

/**
 * Send an open-ended request (`follow`) and call `onLine` for every answer line until the daemon
 * closes the connection or `signal` aborts (then it resolves). No timeout: events may be hours
 * apart. Errors as request().
 */
export function stream(
  path: string,
  req: ControlRequest,
  onLine: OnLine,
  signal?: AbortSignal,
): Promise<void> {
  return exchange(path, req, onLine, { closed: () => undefined, signal });
}
