/**
 * The state sync between the two gateways of a pair, over UDP (protocol.ts), in the spirit of
 * conntrackd's FTFW mode but written for this table:
 *
 * - The active sends DATA messages, numbered in one stream per process start (its epoch): the
 *   events of the ring (events.ts) read as the flows' current fields, a refresh of each flow whose
 *   expiry moved by `refreshSec` since it was last sent (a table slice per tick, so the standby's
 *   timers follow without an event per packet), and, when asked, a bulk resync: a walk of the
 *   whole table between a BULK_BEGIN and a BULK_END message.
 * - The standby applies messages in order, acknowledges the highest in-order seq (cumulative
 *   ACK), asks again for a gap (NACK), and asks for a bulk resync when it has no stream to follow
 *   (it joined, restarted, or the active restarted). At BULK_END it removes the flows the bulk
 *   did not carry (they ended while it was not listening).
 * - The active keeps at most `windowMessages` unacknowledged messages (preallocated buffers) and
 *   resends those older than `resendMs`; it stops taking events while the window is full, and
 *   when the ring overflows, when a NACK asks for what the window no longer holds, or when the
 *   peer falls silent, it drops what is queued and resyncs the whole table instead: memory stays
 *   bounded whatever the peer does. Its sending rate is capped by `maxBytesPerSec` (a token
 *   bucket; heartbeats and acknowledgements are not counted).
 * - Both send a HEARTBEAT every `heartbeatMs`; a peer not heard for `misses` intervals is down.
 *
 * Why UDP and not TCP: failure detection must not wait for TCP's retransmission backoff (a TCP
 * stream to a dead or stopped peer stalls for seconds to minutes before it errors); with a
 * datagram per message the sender alone decides what is kept for resending (the window) and what
 * is dropped for a resync, so no kernel socket buffer grows behind a slow peer; and a restarted
 * peer needs no connection set up again, it just asks for a resync.
 */
import { createSocket, type Socket } from "node:dgram";
import { PROTO_SLOTS, PROTOCOLS } from "../base/protocols.js";
import {
  applyFlow,
  applyRemoval,
  decodeFlow,
  encodeFlow,
  encodeRemoval,
  FLOW_RECORD_BYTES,
  newFlowRecord,
  RecordKind,
} from "../conntrack/snapshot.js";
import { ADOPT_CONFLICT, FlowEvent, FlowFlag, type FlowTable } from "../conntrack/table.js";
import type { EventRing } from "./events.js";
import {
  Authenticator,
  HEADER_BYTES,
  type Header,
  MAC_BYTES,
  MAX_DATAGRAM,
  MsgFlag,
  MsgType,
  newHeader,
  RECORDS_PER_MESSAGE,
  type RejectReason,
  Role,
  writeHeader,
} from "./protocol.js";

/**
 * The flow table the sync reads and writes. Records are encoded, decoded and applied by
 * conntrack/snapshot.ts, the same code the state file uses (one record, one apply path).
 */
export type SyncTable = FlowTable;

/** How datagrams leave and arrive (UDP in the daemon; a lossy pipe in unit tests). */
export interface Transport {
  send(buf: Buffer, len: number): void;
  onMessage(fn: (msg: Buffer) => void): void;
  close(): Promise<void>;
}

export interface SyncOptions {
  key: Buffer;
  heartbeatMs: number;
  misses: number;
  priority: number;
  /** Unacknowledged DATA messages kept for resending (each MAX_DATAGRAM bytes, preallocated). */
  windowMessages: number;
  resendMs: number;
  /** Bytes per second of DATA (resends included) at most. */
  maxBytesPerSec: number;
  /** A flow whose expiry moved by this many seconds since it was last sent is sent again. */
  refreshSec: number;
  /** Milliseconds between two runs of the sender and of the acknowledgements. */
  tickMs: number;
}

export const DEFAULT_SYNC: Omit<SyncOptions, "key"> = {
  heartbeatMs: 200,
  misses: 5,
  priority: 100,
  windowMessages: 512,
  resendMs: 250,
  maxBytesPerSec: 20_000_000,
  refreshSec: 10,
  tickMs: 20,
};

export type PeerState = "unknown" | "up" | "down";

/** Counters of the sync (metrics and `tunnat stats` read them). */
export class SyncStats {
  eventsSent = 0;
  eventsAcked = 0;
  messagesSent = 0;
  messagesResent = 0;
  messagesReceived = 0;
  eventsApplied = 0;
  /** Records the standby could not install (a conflict that survived one retry, table full). */
  applyFailures = 0;
  bulkResyncsSent = 0;
  bulkResyncsReceived = 0;
  /** Bulk resyncs the active started because it had to drop what it queued (overflow, silence). */
  overflows = 0;
  gaps = 0;
  rejected: Record<RejectReason | "epoch", number> = {
    short: 0,
    magic: 0,
    version: 0,
    mac: 0,
    length: 0,
    epoch: 0,
  };
}

export interface SyncDeps {
  table: SyncTable;
  ring: EventRing;
  /** The table's clock in whole seconds. */
  nowSec(): number;
  /** Monotonic milliseconds. */
  nowMs(): number;
  transport: Transport;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** Told when the peer's liveness changes. */
  onPeerChange?(state: PeerState): void;
}

function randomEpoch(): number {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0] === 0 ? 1 : (a[0] as number);
}

export class SyncEndpoint {
  readonly stats = new SyncStats();
  readonly epoch = randomEpoch();
  role: Role = Role.STANDBY;
  /** What the peer says about itself. */
  peerRole = -1;
  peerPriority = -1;
  peerSynced = false;
  peerState: PeerState = "unknown";
  /** Promotions seen in the pair (the controller's), sent in heartbeats; the peer's last one. */
  term = 0;
  peerTerm = 0;
  /** The epoch the peer's messages carry (its current process). */
  peerEpochSeen = 0;
  private lastHeard = 0;
  private readonly auth: Authenticator;
  private readonly h = newHeader();
  private readonly rh = newHeader();
  private readonly rec = newFlowRecord();
  private timer: ReturnType<typeof setInterval> | undefined;
  private lastHeartbeat = -1e12;
  private readonly opts: SyncOptions;

  // Sender (active).
  private nextSeq = 1;
  private readonly win: Buffer[];
  /** A DataView on each window buffer, for the record codec. */
  private readonly winView: DataView[];
  private readonly winLen: Int32Array;
  private readonly winSent: Float64Array;
  private readonly winRecords: Int32Array;
  /** Seq of the oldest unacknowledged message, and how many there are. */
  private winStart = 1;
  private winCount = 0;
  private cur: Buffer | null = null;
  private curView: DataView | null = null;
  private curCount = 0;
  private curFlags = 0;
  private needResync = true;
  private bulkActive = false;
  private bulkBeginPending = false;
  private bulkCursor = 0;
  /** The bulk's walk of the resting ports: (NAT address, protocol) group, its ports, position. */
  private bulkGroup = 0;
  private bulkRest: number[] | null = null;
  private bulkRestAt = 0;
  private bulkStartedMs = -1e12;
  private bulkEndSeq = 0;
  private refreshCursor = 0;
  /** Expiry last sent per flow id, to decide refreshes. */
  private readonly lastSent: Uint32Array;
  private tokens = 0;
  private lastFill = 0;

  // Receiver (standby).
  private peerEpoch = 0;
  private expected = 0;
  private synced = false;
  private inBulk = false;
  private ackDue = false;
  private lastNack = -1e12;
  private lastResyncReq = -1e12;
  private readonly gen: Uint32Array;
  private curGen = 1;

  constructor(
    private readonly deps: SyncDeps,
    opts: SyncOptions,
  ) {
    this.opts = opts;
    this.auth = new Authenticator(opts.key);
    const w = Math.max(4, Math.floor(opts.windowMessages));
    this.win = Array.from({ length: w }, () => Buffer.alloc(MAX_DATAGRAM));
    this.winView = this.win.map((b) => new DataView(b.buffer, b.byteOffset, b.byteLength));
    this.winLen = new Int32Array(w);
    this.winSent = new Float64Array(w);
    this.winRecords = new Int32Array(w);
    this.lastSent = new Uint32Array(deps.table.capacity);
    this.gen = new Uint32Array(deps.table.capacity);
    deps.transport.onMessage((m) => this.receive(m));
    deps.ring.enabled = false;
  }

  start(): void {
    this.lastFill = this.deps.nowMs();
    this.timer = setInterval(() => this.tick(), this.opts.tickMs);
    this.timer.unref();
    this.tick();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.deps.transport.close();
  }

  /** The standby's table follows the active's stream completely (after a bulk resync). */
  get isSynced(): boolean {
    return this.synced;
  }

  /** Unacknowledged messages and queued events. */
  get queued(): { messages: number; events: number } {
    return { messages: this.winCount, events: this.deps.ring.length };
  }

  /** Seconds since the oldest unacknowledged message was first sent (0 when none is). */
  lagSeconds(): number {
    if (this.winCount === 0) return 0;
    return Math.max(0, (this.deps.nowMs() - this.winSent[this.slot(this.winStart)]!) / 1000);
  }

  /** Become the active (stream the table) or the standby (follow the peer's stream). */
  setRole(role: Role): void {
    if (role === this.role) return;
    this.role = role;
    const ring = this.deps.ring;
    ring.reset();
    this.dropWindow();
    if (role === Role.ACTIVE) {
      ring.enabled = this.peerState === "up";
      this.needResync = true;
      this.lastSent.fill(0);
    } else {
      ring.enabled = false;
      // Whatever it had is stale once someone else is active: follow the next stream from a bulk.
      this.peerEpoch = 0;
      this.synced = false;
      this.inBulk = false;
    }
    this.heartbeat(this.deps.nowMs());
  }

  // ------------------------------------------------------------------ periodic work

  tick(): void {
    const now = this.deps.nowMs();
    const silent = this.opts.heartbeatMs * this.opts.misses;
    if (this.peerState === "up" && now - this.lastHeard > silent) this.setPeer("down");
    if (now - this.lastHeartbeat >= this.opts.heartbeatMs) this.heartbeat(now);
    if (this.role === Role.ACTIVE) this.pump(now);
    else this.follow(now);
  }

  private setPeer(s: PeerState): void {
    if (s === this.peerState) return;
    this.peerState = s;
    if (this.role === Role.ACTIVE) {
      if (s === "down") {
        // Nobody to send to: keep nothing queued; the peer gets the whole table when it is back.
        this.deps.ring.enabled = false;
        this.deps.ring.reset();
        this.dropWindow();
        this.bulkActive = false;
        this.needResync = true;
      } else {
        this.deps.ring.enabled = true;
      }
    }
    this.deps.log?.info({ peer: s }, `sync peer ${s}`);
    this.deps.onPeerChange?.(s);
  }

  private heartbeat(now: number): void {
    this.lastHeartbeat = now;
    this.control(MsgType.HEARTBEAT, this.term);
  }

  /** Send a message without records (not windowed, not rate-limited). */
  private control(type: number, arg: number): void {
    const h = this.h;
    h.type = type;
    h.flags = 0;
    h.role = this.role;
    h.epoch = this.epoch;
    h.seq = 0;
    h.ack = this.expected === 0 ? 0 : this.expected - 1;
    h.ackEpoch = this.peerEpoch;
    h.count = 0;
    h.priority = this.opts.priority;
    h.synced = this.synced ? 1 : 0;
    h.arg = arg;
    const buf = Buffer.allocUnsafe(HEADER_BYTES + MAC_BYTES);
    writeHeader(buf, h);
    this.deps.transport.send(buf, this.auth.seal(buf, HEADER_BYTES));
  }

  private slot(seq: number): number {
    return seq % this.win.length;
  }

  private dropWindow(): void {
    this.winCount = 0;
    this.winStart = this.nextSeq;
    this.cur = null;
    this.curCount = 0;
  }

  private refill(now: number): void {
    const rate = this.opts.maxBytesPerSec;
    const burst = Math.max(MAX_DATAGRAM * 8, rate / 10);
    this.tokens = Math.min(burst, this.tokens + ((now - this.lastFill) * rate) / 1000);
    this.lastFill = now;
  }

  /** The active's work: resend, start a bulk, drain the ring, walk the bulk, refresh. */
  private pump(now: number): void {
    if (this.peerState !== "up") return;
    this.refill(now);
    this.resend(now);
    const ring = this.deps.ring;
    if (ring.overflowed) {
      this.stats.overflows++;
      this.deps.log?.warn(
        { capacity: ring.capacity },
        "sync event ring overflowed; resyncing the whole table",
      );
      ring.reset();
      this.needResync = true;
    }
    if (this.needResync && !this.bulkActive && this.winCount < this.win.length) {
      this.needResync = false;
      ring.reset();
      this.bulkActive = true;
      this.bulkBeginPending = true;
      this.bulkCursor = 0;
      this.bulkGroup = 0;
      this.bulkRest = null;
      this.bulkStartedMs = now;
      this.stats.bulkResyncsSent++;
      this.deps.log?.info({ flows: this.deps.table.capacity }, "sync: bulk resync to the peer");
    }
    const table = this.deps.table;
    const nowSec = this.deps.nowSec();
    if (this.bulkBeginPending) {
      if (!this.open(MsgFlag.BULK_BEGIN)) return;
      this.bulkBeginPending = false;
    }
    // Events first: they are what changed most recently.
    for (let i = ring.peek(); i >= 0; i = ring.peek()) {
      if (!this.room()) return;
      const f = ring.flow[i] as number;
      if (ring.kind[i] === FlowEvent.REMOVED) {
        const ports = ring.ports[i] as number;
        // Age 0: the receiver's rest starts when it applies this, never before the sender's.
        encodeRemoval(
          this.curView as DataView,
          this.recOff(),
          ring.proto[i] as number,
          ring.iaddr[i] as number,
          ports >>> 16,
          ring.oaddr[i] as number,
          ring.oport[i] as number,
          ring.raddr[i] as number,
          ports & 0xffff,
          0,
        );
        this.put();
      } else if (table.proto(f) !== 0) {
        this.putFlow(f, nowSec);
      }
      ring.shift();
    }
    if (this.bulkActive) {
      const cap = table.capacity;
      let budget = 16384;
      while (this.bulkCursor < cap && budget-- > 0) {
        const f = this.bulkCursor;
        if (table.proto(f) !== 0) {
          if (!this.room()) return;
          this.putFlow(f, nowSec);
        }
        this.bulkCursor++;
      }
      if (this.bulkCursor < cap) {
        this.flush(now);
        return;
      }
      if (!this.bulkResting(nowSec)) return;
      if (!this.room()) return;
      this.curFlags |= MsgFlag.BULK_END;
      this.bulkEndSeq = this.nextSeq;
      this.bulkActive = false;
      this.flush(now);
      return;
    }
    // Refresh: a slice of the table per tick, so the whole table is seen every refreshSec / 2.
    const ticks = Math.max(1, (this.opts.refreshSec * 500) / this.opts.tickMs);
    let slice = Math.ceil(table.capacity / ticks);
    while (slice-- > 0) {
      const f = this.refreshCursor;
      if (
        table.proto(f) !== 0 &&
        table.expires(f) - (this.lastSent[f] as number) >= this.opts.refreshSec
      ) {
        if (!this.room()) return;
        this.putFlow(f, nowSec);
      }
      if (++this.refreshCursor >= table.capacity) this.refreshCursor = 0;
    }
    this.flush(now);
  }

  /**
   * The bulk's second part: the ports at rest (RFC 6888 REQ-8) as removal records with an empty
   * inside tuple, oldest release first, so a standby that joined after their release does not
   * hand them out before their rest ends. True once every group is sent.
   */
  private bulkResting(nowSec: number): boolean {
    const t = this.deps.table;
    const groups = t.pool.size * PROTO_SLOTS;
    while (this.bulkGroup < groups) {
      const a = Math.floor(this.bulkGroup / PROTO_SLOTS);
      const pi = this.bulkGroup % PROTO_SLOTS;
      if (this.bulkRest === null) {
        const list: number[] = [];
        t.ports.forEachResting(a, pi, (port, freedAt) => list.push(port, freedAt));
        this.bulkRest = list;
        this.bulkRestAt = 0;
      }
      const list = this.bulkRest;
      const proto = PROTOCOLS[pi]?.number ?? 0;
      while (this.bulkRestAt < list.length) {
        if (!this.room()) return false;
        const port = list[this.bulkRestAt] as number;
        const age = nowSec - (list[this.bulkRestAt + 1] as number);
        encodeRemoval(
          this.curView as DataView,
          this.recOff(),
          proto,
          0,
          0,
          t.pool.addrs[a] as number,
          port,
          0,
          0,
          age,
        );
        this.put();
        this.bulkRestAt += 2;
      }
      this.bulkGroup++;
      this.bulkRest = null;
    }
    return true;
  }

  private recOff(): number {
    return HEADER_BYTES + this.curCount * FLOW_RECORD_BYTES;
  }

  private put(): void {
    this.curCount++;
    this.stats.eventsSent++;
    if (this.curCount === RECORDS_PER_MESSAGE) this.flush(this.deps.nowMs());
  }

  /** Send live flow `f` as it is now (counters included); an expired one is left to its removal. */
  private putFlow(f: number, nowSec: number): void {
    const t = this.deps.table;
    this.lastSent[f] = t.expires(f);
    if (encodeFlow(t, f, nowSec, this.curView as DataView, this.recOff())) this.put();
  }

  /** Is there a message to write a record into (opening one if the window and rate allow)? */
  private room(): boolean {
    if (this.cur !== null) return true;
    return this.open(0);
  }

  private open(flags: number): boolean {
    if (this.cur !== null) {
      this.curFlags |= flags;
      return true;
    }
    if (this.winCount >= this.win.length || this.tokens < MAX_DATAGRAM) return false;
    this.cur = this.win[this.slot(this.nextSeq)] as Buffer;
    this.curView = this.winView[this.slot(this.nextSeq)] as DataView;
    this.curCount = 0;
    this.curFlags = flags;
    return true;
  }

  /** Seal and send the open message (one with records or flags), into the window. */
  private flush(now: number): void {
    const buf = this.cur;
    if (buf === null) return;
    if (this.curCount === 0 && this.curFlags === 0) return;
    const h = this.h;
    h.type = MsgType.DATA;
    h.flags = this.curFlags;
    h.role = this.role;
    h.epoch = this.epoch;
    h.seq = this.nextSeq;
    h.ack = 0;
    h.ackEpoch = this.peerEpoch;
    h.count = this.curCount;
    h.priority = this.opts.priority;
    h.synced = 0;
    h.arg = 0;
    writeHeader(buf, h);
    const len = this.auth.seal(buf, HEADER_BYTES + this.curCount * FLOW_RECORD_BYTES);
    const s = this.slot(this.nextSeq);
    this.winLen[s] = len;
    this.winSent[s] = now;
    this.winRecords[s] = this.curCount;
    if (this.winCount === 0) this.winStart = this.nextSeq;
    this.winCount++;
    this.nextSeq++;
    this.cur = null;
    this.curCount = 0;
    this.curFlags = 0;
    this.tokens -= len;
    this.stats.messagesSent++;
    this.deps.transport.send(buf, len);
  }

  private resend(now: number, from = -1, to = -1): void {
    const end = this.winStart + this.winCount;
    const lo = from < 0 ? this.winStart : Math.max(from, this.winStart);
    const hi = to < 0 ? end - 1 : Math.min(to, end - 1);
    for (let seq = lo; seq <= hi; seq++) {
      const s = this.slot(seq);
      if (from < 0 && now - (this.winSent[s] as number) < this.opts.resendMs) break;
      if (this.tokens < MAX_DATAGRAM) break;
      const len = this.winLen[s] as number;
      this.tokens -= len;
      this.winSent[s] = now;
      this.stats.messagesResent++;
      this.deps.transport.send(this.win[s] as Buffer, len);
    }
  }

  /** The standby's work: acknowledge, and ask for a resync when there is no stream to follow. */
  private follow(now: number): void {
    if (this.ackDue) {
      this.ackDue = false;
      this.control(MsgType.ACK, 0);
    }
    if (
      !this.synced &&
      !this.inBulk &&
      this.peerState === "up" &&
      this.peerRole === Role.ACTIVE &&
      now - this.lastResyncReq > 1000
    ) {
      this.lastResyncReq = now;
      this.control(MsgType.RESYNC_REQUEST, 0);
    }
  }

  // ------------------------------------------------------------------ receiving

  receive(msg: Buffer): void {
    const h = this.rh;
    const why = this.auth.open(msg, h);
    if (why !== null) {
      this.stats.rejected[why]++;
      return;
    }
    if (h.epoch === this.epoch) {
      // Our own epoch coming back: a looped or reflected datagram.
      this.stats.rejected.epoch++;
      return;
    }
    this.stats.messagesReceived++;
    const now = this.deps.nowMs();
    this.lastHeard = now;
    this.peerRole = h.role;
    this.peerEpochSeen = h.epoch;
    this.peerPriority = h.priority;
    if (h.type !== MsgType.DATA) this.peerSynced = h.synced === 1;
    if (h.type === MsgType.HEARTBEAT) this.peerTerm = h.arg;
    if (this.peerState !== "up") this.setPeer("up");
    switch (h.type) {
      case MsgType.DATA:
        if (this.role === Role.STANDBY) this.data(msg, h, now);
        return;
      case MsgType.HEARTBEAT:
      case MsgType.ACK:
        if (this.role === Role.ACTIVE) this.acked(h);
        return;
      case MsgType.NACK:
        if (this.role === Role.ACTIVE) this.nacked(h, now);
        return;
      case MsgType.RESYNC_REQUEST:
        if (this.role === Role.ACTIVE) this.resyncRequested(now);
        return;
    }
  }

  private acked(h: Header): void {
    if (h.ackEpoch !== this.epoch) return;
    while (this.winCount > 0 && this.winStart <= h.ack) {
      this.stats.eventsAcked += this.winRecords[this.slot(this.winStart)] as number;
      this.winStart++;
      this.winCount--;
    }
  }

  private nacked(h: Header, now: number): void {
    if (h.ackEpoch !== this.epoch) return;
    this.acked(h);
    const from = h.ack + 1;
    if (from < this.winStart) {
      // Asked for what is no longer kept: only the whole table can make it right.
      this.stats.overflows++;
      this.resyncRequested(now);
      return;
    }
    this.refill(now);
    this.resend(now, from, h.arg);
  }

  private resyncRequested(now: number): void {
    // One bulk at a time: a request while one is on its way (or its end is unacknowledged, for
    // a little while) is the same request again.
    const pending = this.bulkActive || (this.winCount > 0 && this.winStart <= this.bulkEndSeq);
    if (pending && now - this.bulkStartedMs < 3000) return;
    this.deps.ring.reset();
    this.dropWindow();
    this.bulkActive = false;
    this.needResync = true;
  }

  private data(msg: Buffer, h: Header, now: number): void {
    if (
      (h.flags & MsgFlag.BULK_BEGIN) !== 0 &&
      (h.epoch !== this.peerEpoch || h.seq >= this.expected)
    ) {
      this.peerEpoch = h.epoch;
      this.expected = h.seq;
      this.inBulk = true;
      this.synced = false;
      this.curGen = (this.curGen + 1) >>> 0 || 1;
      this.stats.bulkResyncsReceived++;
    }
    if (h.epoch !== this.peerEpoch) {
      // A stream we never saw begin: the follow() timer asks for a resync.
      return;
    }
    if (h.seq < this.expected) {
      this.ackDue = true; // a resend of what we have: say so again
      return;
    }
    if (h.seq > this.expected) {
      this.stats.gaps++;
      if (now - this.lastNack > this.opts.resendMs / 2) {
        this.lastNack = now;
        this.control(MsgType.NACK, h.seq - 1);
      }
      return;
    }
    this.apply(msg, h.count);
    this.expected++;
    this.ackDue = true;
    if ((h.flags & MsgFlag.BULK_END) !== 0 && this.inBulk) {
      this.inBulk = false;
      this.synced = true;
      this.dropStale();
    }
  }

  private apply(msg: Buffer, count: number): void {
    const t = this.deps.table;
    const r = this.rec;
    const nowSec = this.deps.nowSec();
    const v = new DataView(msg.buffer, msg.byteOffset, msg.length);
    // The standby keeps each flow 2 refresh periods longer than the active said: refreshes may
    // lag by up to one, and it must never expire a flow the active still forwards.
    const grace = 2 * this.opts.refreshSec;
    for (let i = 0; i < count; i++) {
      if (decodeFlow(v, HEADER_BYTES + i * FLOW_RECORD_BYTES, r) !== null) {
        this.stats.applyFailures++;
        continue;
      }
      this.stats.eventsApplied++;
      if (r.kind === RecordKind.REMOVED) {
        applyRemoval(t, r, nowSec);
        continue;
      }
      r.ttl += grace;
      let f = applyFlow(t, r, nowSec);
      if (f === ADOPT_CONFLICT) {
        this.removeConflicts(nowSec);
        f = applyFlow(t, r, nowSec);
      }
      if (f >= 0) this.gen[f] = this.curGen;
      else this.stats.applyFailures++;
    }
  }

  /**
   * The active's record says an inside endpoint or an outside port belongs to another flow than
   * ours: ours are stale (they ended while we did not listen). Remove every flow that holds the
   * record's inside endpoint or outside port; where the record or the flow is a static
   * forward's (whose outside port many connections share), only a flow with the same inside or
   * outside tuple. A table walk, but only on a conflict.
   */
  private removeConflicts(nowSec: number): void {
    const t = this.deps.table;
    const r = this.rec;
    const fwd = (r.flags & FlowFlag.FORWARD) !== 0;
    for (let f = 0; f < t.capacity; f++) {
      if (t.proto(f) !== r.proto) continue;
      const remote = t.raddr(f) === r.raddr && t.rport(f) === r.rport;
      const exact = fwd || (t.flags(f) & FlowFlag.FORWARD) !== 0;
      const sameInside = t.iaddr(f) === r.iaddr && t.iport(f) === r.iport && (!exact || remote);
      const sameOutside = t.oaddr(f) === r.oaddr && t.oport(f) === r.oport && (!exact || remote);
      if (sameInside || sameOutside) t.remove(f, nowSec);
    }
  }

  /** After a bulk: remove the flows it did not carry. */
  private dropStale(): void {
    const t = this.deps.table;
    const nowSec = this.deps.nowSec();
    let n = 0;
    for (let f = 0; f < t.capacity; f++) {
      if (t.proto(f) !== 0 && this.gen[f] !== this.curGen) {
        t.remove(f, nowSec);
        n++;
      }
    }
    this.deps.log?.info({ stale: n }, "sync: bulk resync received");
  }
}

/** UDP between the two sync addresses; datagrams from any other source are dropped. */
export async function udpTransport(
  local: { host: string; port: number },
  peer: { host: string; port: number },
  onError?: (e: Error) => void,
): Promise<Transport & { socket: Socket }> {
  const socket = createSocket({ type: "udp4" });
  let handler: ((m: Buffer) => void) | null = null;
  socket.on("message", (m, rinfo) => {
    if (rinfo.address !== peer.host) return;
    handler?.(m);
  });
  socket.on("error", (e) => onError?.(e));
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(local.port, local.host, () => {
      socket.off("error", reject);
      resolve();
    });
  });
  return {
    socket,
    send(buf, len) {
      socket.send(buf, 0, len, peer.port, peer.host, (e) => {
        // ENETUNREACH, EHOSTUNREACH, ECONNREFUSED on a broken link: the window keeps the data.
        void e;
      });
    },
    onMessage(fn) {
      handler = fn;
    },
    close() {
      return new Promise((resolve) => socket.close(() => resolve()));
    },
  };
}
