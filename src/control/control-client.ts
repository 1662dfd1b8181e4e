/**
 * The client side of the control socket (control-protocol.ts), for `tunnat flows` and
 * `tunnat stats`. Imports nothing of the daemon, so the CLI stays light.
 */
import { createConnection } from "node:net";
import { ErrorCode, TunnatError } from "../base/errors.js";
import type { ControlRequest } from "./control-protocol.js";

/**
 * Send one request and call `onLine` for every answer line until the "end", "stats" or "error"
 * line. Errors: TUNNAT_ERR_NOT_RUNNING when nothing listens, TUNNAT_ERR_CONTROL otherwise.
 */
export function request(
  path: string,
  req: ControlRequest,
  onLine: (obj: Record<string, unknown>) => void,
  timeoutMs = 30_000,
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
    sock.setTimeout(timeoutMs, () =>
      finish(new TunnatError(ErrorCode.Control, `no answer from ${path} in ${timeoutMs} ms`)),
    );
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT" || e.code === "ECONNREFUSED")
        finish(
          new TunnatError(
            ErrorCode.NotRunning,
            `daemon not reachable at ${path} (${e.code}); is tunnat running? (--socket PATH)`,
          ),
        );
      else if (e.code === "EACCES")
        finish(
          new TunnatError(
            ErrorCode.Control,
            `permission denied on ${path}: use root, or a member of the daemon's --control-socket-group (the unit's: tunnat)`,
          ),
        );
      else finish(new TunnatError(ErrorCode.Control, `control socket ${path}: ${e.message}`));
    });
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
        if (
          obj.type === "end" ||
          obj.type === "stats" ||
          obj.type === "ha" ||
          obj.type === "restart"
        )
          finish();
      }
    });
    sock.on("close", () =>
      finish(new TunnatError(ErrorCode.Control, `${path} closed the connection before answering`)),
    );
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
  onLine: (obj: Record<string, unknown>) => void,
  signal?: AbortSignal,
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
    signal?.addEventListener("abort", () => finish(), { once: true });
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("error", (e: NodeJS.ErrnoException) =>
      finish(
        new TunnatError(
          e.code === "ENOENT" || e.code === "ECONNREFUSED"
            ? ErrorCode.NotRunning
            : ErrorCode.Control,
          `control socket ${path}: ${e.code ?? e.message}`,
        ),
      ),
    );
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
      }
    });
    sock.on("close", () => finish());
  });
}
