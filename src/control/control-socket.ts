/**
 * The control socket behind `tunnat flows` and `tunnat stats`: a unix stream socket for its owner
 * only (0600; its directory is created 0700 when missing) or, with --control-socket-group, for
 * that group too (0660, group set with chown; the unit's RuntimeDirectory /run/tunnat is 0750
 * with the daemon's group), speaking the newline-delimited JSON of control-protocol.ts. The
 * client is control-client.ts; what `stats` answers is stats-snapshot.ts. A request names its
 * `cmd`; HANDLERS below maps each to its answer (adding one is one entry there).
 *
 * Listing a full table (millions of slots) must not stall forwarding: the table is scanned in
 * chunks of 16 k slots with setImmediate between them, so batches from the TUN are handled in
 * between, and the answer is streamed as it is found, pausing while the client's socket is
 * backed up. A listing is therefore a walk, not an atomic snapshot, like `conntrack -L`.
 *
 * No client can stop the daemon or hold it hostage. Every accepted socket gets its error handler
 * before anything else is done with it (a reset from a client that hangs up is an "error" event,
 * and one without a listener is an uncaught exception that ends the process); the request buffer
 * is bounded (a longer line is answered with an error and the connection closed, its further bytes
 * discarded); a connection reads no further request while one is being answered, so a client that
 * pipelines requests and never reads queues nothing; and a connection idle for IDLE_TIMEOUT_MS (a
 * partial request never finished, or an answer the client never reads) is destroyed, which frees
 * its slot and ends a listing that waits for it to drain.
 */
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";
import { PROTOCOL_NAMES } from "../base/protocols.js";
import { FlowFlag, type FlowTable } from "../conntrack/table.js";
import { TCP_STATE_NAMES } from "../conntrack/tcp-state.js";
import { formatIpv4, parseIpv4 } from "../wire/addr.js";
import type { ControlRequest, FlowFilter, FlowRecord } from "./control-protocol.js";
import { protoName } from "./mapping-log.js";
import { PROTOCOLS } from "./observed.js";
import { socketAnswers } from "./owner.js";

/** Slots scanned between two turns of the event loop. */
const SCAN_CHUNK = 16384;
/** Longest request line accepted. */
const MAX_REQUEST = 64 * 1024;
/** Connections served at once; more are refused (a listing costs a table walk). */
export const MAX_CLIENTS = 16;
/**
 * A connection with no traffic either way for this long is destroyed: a request not finished, or
 * an answer not read. Generous, since `tunnat flows | less` may sit on a backed-up listing a while.
 */
const IDLE_TIMEOUT_MS = 30_000;
/** How long a refused ("busy") connection may take to read its one error line. */
const BUSY_LINGER_MS = 1000;

/** What the socket answers from. */
export interface ControlSource {
  table: FlowTable;
  /** The table's clock in whole seconds. */
  nowSec(): number;
  /** The counters `tunnat stats` prints. */
  stats(): Record<string, unknown>;
  /** `tunnat ha` (src/ha), when this daemon is one of an HA pair. */
  ha?(req: { action?: unknown; state?: unknown }): Promise<object>;
}

function stateName(table: FlowTable, f: number): string {
  const p = table.proto(f);
  const st = table.state(f);
  if (p === 6) return TCP_STATE_NAMES[st] ?? String(st);
  return st !== 0 ? "REPLIED" : "UNREPLIED";
}

function flowRecord(table: FlowTable, f: number, now: number): FlowRecord {
  const fl = table.flags(f);
  return {
    type: "flow",
    proto: protoName(table.proto(f)),
    state: stateName(table, f),
    timeout: Math.max(0, table.expires(f) - now),
    insideAddr: formatIpv4(table.iaddr(f)),
    insidePort: table.iport(f),
    outsideAddr: formatIpv4(table.oaddr(f)),
    outsidePort: table.oport(f),
    remoteAddr: formatIpv4(table.raddr(f)),
    remotePort: table.rport(f),
    pktsOut: table.pktsOut(f),
    bytesOut: table.bytesOut(f),
    pktsIn: table.pktsIn(f),
    bytesIn: table.bytesIn(f),
    replied: (fl & FlowFlag.REPLIED) !== 0,
    inbound: (fl & FlowFlag.INBOUND) !== 0,
  };
}

function badRequest(msg: string): TunnatError {
  return new TunnatError(ErrorCode.Control, msg);
}

/** Validate a filter; throws TUNNAT_ERR_CONTROL naming the bad field. */
function compileFilter(r: FlowFilter): (t: FlowTable, f: number) => boolean {
  let host = -1;
  if (r.host !== undefined) {
    host = parseIpv4(String(r.host));
    if (host < 0) throw badRequest(`bad host "${r.host}": expected an IPv4 address`);
  }
  let proto = 0;
  if (r.proto !== undefined) {
    const p = PROTOCOLS.find(([, n]) => n === r.proto);
    if (!p) throw badRequest(`bad proto "${r.proto}": expected ${PROTOCOL_NAMES.join(", ")}`);
    proto = p[0];
  }
  const state = r.state === undefined ? undefined : String(r.state).toUpperCase();
  if (
    state !== undefined &&
    !TCP_STATE_NAMES.includes(state) &&
    state !== "REPLIED" &&
    state !== "UNREPLIED"
  )
    throw badRequest(
      `bad state "${r.state}": expected one of ${[...TCP_STATE_NAMES, "REPLIED", "UNREPLIED"].join(", ")}`,
    );
  return (t, f) =>
    (host < 0 || t.iaddr(f) === host >>> 0) &&
    (proto === 0 || t.proto(f) === proto) &&
    (state === undefined || stateName(t, f) === state);
}

/** Resolves when the socket can take more (or has closed). */
function drained(sock: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      sock.off("drain", done);
      sock.off("close", done);
      resolve();
    };
    sock.once("drain", done);
    sock.once("close", done);
  });
}

/** Write a line, resolving once the socket can take more. */
function send(sock: Socket, obj: unknown): Promise<void> | undefined {
  if (sock.destroyed) return undefined;
  return sock.write(`${JSON.stringify(obj)}\n`) ? undefined : drained(sock);
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Stream the flows that match `req` to `sock`, SCAN_CHUNK slots per event-loop turn. */
async function streamFlows(
  src: ControlSource,
  req: FlowFilter,
  sock: Socket,
  chunk = SCAN_CHUNK,
): Promise<void> {
  const match = compileFilter(req);
  const limit =
    req.limit === undefined ? Number.POSITIVE_INFINITY : Math.max(0, Math.floor(Number(req.limit)));
  const t = src.table;
  let matched = 0;
  for (let start = 0; start < t.capacity && matched < limit; start += chunk) {
    const end = Math.min(t.capacity, start + chunk);
    const now = src.nowSec();
    const lines: string[] = [];
    for (let f = start; f < end && matched < limit; f++) {
      if (t.proto(f) === 0 || !match(t, f)) continue;
      lines.push(JSON.stringify(flowRecord(t, f, now)));
      matched++;
    }
    if (sock.destroyed) return;
    if (lines.length > 0 && !sock.write(`${lines.join("\n")}\n`)) await drained(sock);
    await turn();
  }
  await send(sock, { type: "end", matched });
}

export interface ControlServer {
  readonly path: string;
  readonly server: Server;
  close(): Promise<void>;
}

/** Listen on the control socket at `path`. */
export async function startControlSocket(
  path: string,
  src: ControlSource,
  log?: Logger,
  opts: { idleTimeoutMs?: number; group?: number | undefined } = {},
): Promise<ControlServer> {
  const idleTimeoutMs = opts.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  const group = opts.group;
  const dir = dirname(path);
  try {
    // Only a directory we create gets 0700; an existing one (/run) is left alone.
    if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new TunnatError(
      ErrorCode.Control,
      `cannot create the control socket directory ${dir}: ${errorMessage(e)}`,
    );
  }
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket())
      throw new TunnatError(
        ErrorCode.Control,
        `${path} exists and is not a socket; remove it or choose another --control-socket`,
      );
    if (await socketAnswers(path))
      throw new TunnatError(
        ErrorCode.Control,
        `another daemon answers on ${path}; stop it or choose another --control-socket`,
      );
    unlinkSync(path); // stale, from a daemon that died
  }
  const clients = new Set<Socket>();
  const refused = new Set<Socket>();
  const server = createServer((sock) => {
    // First of all: a client that resets (ECONNRESET, EPIPE) must not become an uncaught error.
    sock.on("error", () => sock.destroy());
    if (clients.size >= MAX_CLIENTS) {
      // Tell it why, read nothing, and do not wait long for it to take the line.
      refused.add(sock);
      sock.on("close", () => refused.delete(sock));
      sock.pause();
      sock.setTimeout(BUSY_LINGER_MS, () => sock.destroy());
      sock.end(
        `${JSON.stringify({ type: "error", code: ErrorCode.Control, error: "busy" })}\n`,
        () => sock.destroy(),
      );
      return;
    }
    clients.add(sock);
    sock.on("close", () => clients.delete(sock));
    sock.setTimeout(idleTimeoutMs, () => sock.destroy());
    serve(sock, src, log);
  });
  // A failed accept (EMFILE) is reported on the server; it must not end the process either.
  server.on("error", (e) => log?.warn({ err: errorMessage(e) }, "control socket error"));
  // The socket is created with the process umask; narrow it so no other user can ever connect,
  // not even in the moment before chmod.
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (e) {
    throw new TunnatError(
      ErrorCode.Control,
      `cannot listen on the control socket ${path}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`,
    );
  } finally {
    process.umask(old);
  }
  try {
    // Group first, then widen: the socket is never 0660 with a group it was not meant for.
    if (group !== undefined) chownSync(path, -1, group);
    chmodSync(path, group === undefined ? 0o600 : 0o660);
  } catch (e) {
    server.close();
    throw new TunnatError(
      ErrorCode.Control,
      `cannot give the control socket ${path} to group ${group}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)} (the daemon must be a member of it, or root)`,
    );
  }
  return {
    path,
    server,
    close() {
      return new Promise<void>((resolve) => {
        for (const c of clients) c.destroy();
        for (const c of refused) c.destroy();
        server.close(() => {
          try {
            unlinkSync(path);
          } catch {
            // already gone
          }
          resolve();
        });
      });
    },
  };
}

function serve(sock: Socket, src: ControlSource, log?: Logger): void {
  let buf = "";
  let answering = false;
  let closed = false;
  sock.setEncoding("utf8");
  const tooLong = (): void => {
    closed = true;
    buf = "";
    // Destroy once the line is out: a client that keeps sending must not keep the slot.
    sock.end(
      `${JSON.stringify({ type: "error", code: ErrorCode.Control, error: "request too long" })}\n`,
      () => sock.destroy(),
    );
  };
  // Answer the complete lines in buf one after the other; reading is paused meanwhile, so buf
  // holds at most one read beyond the request being answered.
  const next = (): void => {
    while (!closed && !sock.destroyed) {
      const nl = buf.indexOf("\n");
      if (nl < 0 ? buf.length > MAX_REQUEST : nl > MAX_REQUEST) {
        tooLong();
        return;
      }
      if (nl < 0) return;
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line === "") continue;
      answering = true;
      sock.pause();
      answer(sock, src, line)
        .catch((e: unknown) => {
          log?.warn({ err: errorMessage(e) }, "control request failed");
        })
        .finally(() => {
          answering = false;
          if (!sock.destroyed) sock.resume();
          next();
        });
      return;
    }
  };
  sock.on("data", (d: string) => {
    if (closed) return; // after "request too long": discard whatever else comes
    buf += d;
    if (!answering) next();
  });
}

/** What each request answers, by its cmd. */
const HANDLERS: Record<
  ControlRequest["cmd"],
  (src: ControlSource, req: ControlRequest, sock: Socket) => Promise<void>
> = {
  flows: (src, req, sock) => streamFlows(src, req as FlowFilter, sock),
  stats: async (src, _req, sock) => {
    await send(sock, { type: "stats", stats: src.stats() });
  },
  ha: async (src, req, sock) => {
    if (!src.ha) throw badRequest("this daemon is not one of an HA pair (no --ha)");
    await send(sock, {
      type: "ha",
      ha: await src.ha(req as { action?: unknown; state?: unknown }),
    });
  },
};

async function answer(sock: Socket, src: ControlSource, line: string): Promise<void> {
  let req: ControlRequest;
  try {
    req = JSON.parse(line) as ControlRequest;
    if (typeof req !== "object" || req === null) throw new Error("not an object");
  } catch (e) {
    await send(sock, {
      type: "error",
      code: ErrorCode.Control,
      error: `bad request: ${errorMessage(e)}`,
    });
    return;
  }
  try {
    const handler = Object.hasOwn(HANDLERS, req.cmd) ? HANDLERS[req.cmd] : undefined;
    if (!handler) throw badRequest(`unknown cmd ${JSON.stringify((req as { cmd?: unknown }).cmd)}`);
    await handler(src, req, sock);
  } catch (e) {
    const code = e instanceof TunnatError ? e.code : ErrorCode.Control;
    await send(sock, { type: "error", code, error: errorMessage(e) });
  }
}
