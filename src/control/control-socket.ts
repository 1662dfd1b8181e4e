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
import type { FlowEventRecord, FlowEvents } from "./flow-events.js";
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
  /** Flow create/destroy events (`flows --follow`) and creation times (`--sort age`). */
  events?: FlowEvents;
  /** Wall clock in ms, for the time of an event (tests pass a fixed one). */
  wallMs?: () => number;
  /**
   * An outside address of the table as operators see it (shared-address.ts shownAddress): what
   * listings and events show, and what a `nat` filter is compared with. Absent = as is.
   */
  outsideAddress?: (addr: number) => number;
  /** `tunnat ha` (src/ha), when this daemon is one of an HA pair. */
  ha?(req: { action?: unknown; state?: unknown }): Promise<object>;
  /** `tunnat restart`: start a handover restart; resolves once the successor runs. */
  restart?(): Promise<object>;
}

function stateNameOf(p: number, st: number): string {
  if (p === 6) return TCP_STATE_NAMES[st] ?? String(st);
  return st !== 0 ? "REPLIED" : "UNREPLIED";
}

function stateName(table: FlowTable, f: number): string {
  return stateNameOf(table.proto(f), table.state(f));
}

function flowRecord(
  table: FlowTable,
  f: number,
  now: number,
  events: FlowEvents | undefined,
  shown: (addr: number) => number,
): FlowRecord {
  const fl = table.flags(f);
  const r: FlowRecord = {
    type: "flow",
    proto: protoName(table.proto(f)),
    state: stateName(table, f),
    timeout: Math.max(0, table.expires(f) - now),
    insideAddr: formatIpv4(table.iaddr(f)),
    insidePort: table.iport(f),
    outsideAddr: formatIpv4(shown(table.oaddr(f))),
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
  if (events) r.age = Math.max(0, now - (events.created[f] ?? now));
  return r;
}

function badRequest(msg: string): TunnatError {
  return new TunnatError(ErrorCode.Control, msg);
}

/** A filter over a flow's fields (from the table or from an event record). */
type Match = (
  proto: number,
  state: number,
  iaddr: number,
  oaddr: number,
  oport: number,
  raddr: number,
  rport: number,
) => boolean;

/** "ADDR" or "ADDR:PORT" as [addr, port or -1]; throws naming the field. */
function addrPort(field: string, v: unknown): [number, number] {
  const text = String(v);
  const m = /^([0-9.]+)(?::([0-9]{1,5}))?$/.exec(text);
  const a = m ? parseIpv4(m[1] ?? "") : -1;
  const port = m?.[2] === undefined ? -1 : Number(m[2]);
  if (a < 0 || port > 65535)
    throw badRequest(`bad ${field} "${text}": expected an IPv4 address, optionally with :PORT`);
  return [a >>> 0, port];
}

const asIs = (a: number) => a;

/**
 * Validate a filter; throws TUNNAT_ERR_CONTROL naming the bad field. `nat` is compared with the
 * outside address as shown (`shown`), the one the operator sees.
 */
function compileFilter(r: FlowFilter, shown: (addr: number) => number = asIs): Match {
  let host = -1;
  if (r.host !== undefined) {
    host = parseIpv4(String(r.host));
    if (host < 0) throw badRequest(`bad host "${r.host}": expected an IPv4 address`);
    host >>>= 0;
  }
  const [dst, dport] = r.dst === undefined ? [-1, -1] : addrPort("dst", r.dst);
  const [nat, nport] = r.nat === undefined ? [-1, -1] : addrPort("nat", r.nat);
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
  return (p, st, ia, oa, op, ra, rp) =>
    (host < 0 || ia === host) &&
    (dst < 0 || ra === dst) &&
    (dport < 0 || rp === dport) &&
    (nat < 0 || shown(oa) === nat) &&
    (nport < 0 || op === nport) &&
    (proto === 0 || p === proto) &&
    (state === undefined || stateNameOf(p, st) === state);
}

function matchFlow(m: Match, t: FlowTable, f: number): boolean {
  return m(t.proto(f), t.state(f), t.iaddr(f), t.oaddr(f), t.oport(f), t.raddr(f), t.rport(f));
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
  const shown = src.outsideAddress ?? asIs;
  const match = compileFilter(req, shown);
  const events = src.events;
  const limit =
    req.limit === undefined ? Number.POSITIVE_INFINITY : Math.max(0, Math.floor(Number(req.limit)));
  const t = src.table;
  let matched = 0;
  for (let start = 0; start < t.capacity && matched < limit; start += chunk) {
    const end = Math.min(t.capacity, start + chunk);
    const now = src.nowSec();
    const lines: string[] = [];
    for (let f = start; f < end && matched < limit; f++) {
      if (t.proto(f) === 0 || !matchFlow(match, t, f)) continue;
      lines.push(JSON.stringify(flowRecord(t, f, now, events, shown)));
      matched++;
    }
    if (sock.destroyed) return;
    if (lines.length > 0 && !sock.write(`${lines.join("\n")}\n`)) await drained(sock);
    await turn();
  }
  await send(sock, { type: "end", matched });
}

/**
 * Remove the flows that match `req` (`tunnat flows --delete`), as expiry removes them: a port
 * whose last flow goes enters its rest period, and the mapping log writes its remove line. At
 * least one of host, dst, nat must be given, or all: true.
 */
async function deleteFlows(src: ControlSource, req: FlowFilter, sock: Socket): Promise<void> {
  if (req.host === undefined && req.dst === undefined && req.nat === undefined && !req.all)
    throw badRequest("delete needs host, dst or nat, or all: true");
  const match = compileFilter(req, src.outsideAddress);
  const t = src.table;
  let deleted = 0;
  for (let start = 0; start < t.capacity; start += SCAN_CHUNK) {
    const end = Math.min(t.capacity, start + SCAN_CHUNK);
    const now = src.nowSec();
    for (let f = start; f < end; f++) {
      if (t.proto(f) === 0 || !matchFlow(match, t, f)) continue;
      t.remove(f, now);
      deleted++;
    }
    await turn();
  }
  await send(sock, { type: "end", matched: deleted, deleted });
}

/** How often followers are sent the new events. */
const DRAIN_MS = 100;
/** Events sent to one follower per drain; the rest wait for the next. */
const DRAIN_MAX = 2048;
/** A follower whose socket holds this much unsent is skipped (its events may then be lost). */
const FOLLOW_BACKLOG = 256 * 1024;

interface Follower {
  sock: Socket;
  match: Match;
  cursor: number;
}

/** The followers of one control socket and the timer that drains the event ring to them. */
class Followers {
  private readonly set = new Set<Follower>();
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly src: ControlSource) {}

  add(sock: Socket, req: FlowFilter): Promise<void> {
    const events = this.src.events;
    if (!events) throw badRequest("this daemon keeps no flow events");
    const f: Follower = {
      sock,
      match: compileFilter(req, this.src.outsideAddress),
      cursor: events.seq,
    };
    this.set.add(f);
    // A follower may be quiet for hours: the idle timeout is for requests, not for this.
    sock.setTimeout(0);
    if (!this.timer) {
      this.timer = setInterval(() => this.drain(), DRAIN_MS);
      this.timer.unref();
    }
    return new Promise<void>((resolve) => {
      sock.once("close", () => {
        this.set.delete(f);
        if (this.set.size === 0) this.stop();
        resolve();
      });
      void send(sock, { type: "following" });
    });
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Send each follower what it has not seen (control plane; allocates freely). */
  drain(): void {
    const events = this.src.events;
    if (!events) return;
    const nowSec = this.src.nowSec();
    const wall = (this.src.wallMs ?? Date.now)();
    for (const f of this.set) {
      if (f.sock.destroyed || f.sock.writableLength > FOLLOW_BACKLOG) continue;
      const lines: string[] = [];
      const r = events.read(f.cursor, DRAIN_MAX, (e) => {
        if (
          f.match(
            e.proto,
            e.state,
            e.insideAddr,
            e.outsideAddr,
            e.outsidePort,
            e.remoteAddr,
            e.remotePort,
          )
        )
          lines.push(
            JSON.stringify(eventLine(e, wall - (nowSec - e.at) * 1000, this.src.outsideAddress)),
          );
      });
      if (r.missed > 0) lines.unshift(JSON.stringify({ type: "lost", count: r.missed }));
      f.cursor = r.cursor;
      if (lines.length > 0) f.sock.write(`${lines.join("\n")}\n`);
    }
  }
}

function eventLine(
  e: FlowEventRecord,
  wallMs: number,
  shown: (addr: number) => number = asIs,
): Record<string, unknown> {
  return {
    type: "event",
    event: e.event,
    time: new Date(wallMs).toISOString(),
    proto: protoName(e.proto),
    state: stateNameOf(e.proto, e.state),
    insideAddr: formatIpv4(e.insideAddr),
    insidePort: e.insidePort,
    outsideAddr: formatIpv4(shown(e.outsideAddr)),
    outsidePort: e.outsidePort,
    remoteAddr: formatIpv4(e.remoteAddr),
    remotePort: e.remotePort,
    pktsOut: e.pktsOut,
    bytesOut: e.bytesOut,
    pktsIn: e.pktsIn,
    bytesIn: e.bytesIn,
    ...(e.event === "destroy" ? { lifetime: e.lifetime } : {}),
  };
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
  const followers = new Followers(src);
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
    serve(sock, src, followers, log);
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
        followers.stop();
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

function serve(sock: Socket, src: ControlSource, followers: Followers, log?: Logger): void {
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
      answer(sock, src, followers, line)
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
  (src: ControlSource, req: ControlRequest, sock: Socket, followers: Followers) => Promise<void>
> = {
  flows: (src, req, sock) => streamFlows(src, req as FlowFilter, sock),
  delete: (src, req, sock) => deleteFlows(src, req as FlowFilter, sock),
  follow: (_src, req, sock, followers) => followers.add(sock, req as FlowFilter),
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
  restart: async (src, _req, sock) => {
    if (!src.restart) throw badRequest("this daemon cannot restart itself");
    await send(sock, { type: "restart", ...(await src.restart()) });
  },
};

async function answer(
  sock: Socket,
  src: ControlSource,
  followers: Followers,
  line: string,
): Promise<void> {
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
    await handler(src, req, sock, followers);
  } catch (e) {
    const code = e instanceof TunnatError ? e.code : ErrorCode.Control;
    await send(sock, { type: "error", code, error: errorMessage(e) });
  }
}
