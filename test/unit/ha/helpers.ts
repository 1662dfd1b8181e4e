// A pair of flow tables joined by two SyncEndpoints over an in-memory datagram pipe that can
// lose, hold back or cut datagrams, on a manual clock: the sync protocol without sockets or time.
import { FlowFlag, FlowTable } from "../../../src/conntrack/table.js";
import { EventRing } from "../../../src/ha/events.js";
import { Role } from "../../../src/ha/protocol.js";
import {
  DEFAULT_SYNC,
  SyncEndpoint,
  type SyncOptions,
  type Transport,
} from "../../../src/ha/sync.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";

export const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const NAT = ip("198.51.100.1");
export const KEY = Buffer.alloc(32, 7);

export class Clock {
  ms = 1_000_000;
  get sec(): number {
    return Math.floor(this.ms / 1000);
  }
}

/** One end of a datagram pipe. */
export class End implements Transport {
  queue: Buffer[] = [];
  /** Probability that a datagram sent from this end is lost. */
  loss = 0;
  /** Cut: nothing sent from this end arrives. */
  cut = false;
  /** Held: datagrams to this end wait (a stopped process), up to `holdLimit` (a socket buffer). */
  held = false;
  holdLimit = 1000;
  sent = 0;
  peer: End | undefined;
  private handler: ((m: Buffer) => void) | null = null;
  private seed = 12345;
  private rnd(): number {
    this.seed = (this.seed * 1103515245 + 12345) & 0x7fffffff;
    return this.seed / 0x7fffffff;
  }
  send(buf: Buffer, len: number): void {
    this.sent++;
    if (this.cut || (this.loss > 0 && this.rnd() < this.loss)) return;
    const p = this.peer as End;
    if (p.held && p.queue.length >= p.holdLimit) return;
    p.queue.push(Buffer.from(buf.subarray(0, len)));
  }
  onMessage(fn: (m: Buffer) => void): void {
    this.handler = fn;
  }
  async close(): Promise<void> {}
  deliver(): void {
    if (this.held) return;
    const q = this.queue;
    this.queue = [];
    for (const m of q) this.handler?.(m);
  }
}

export function pipe(): [End, End] {
  const a = new End();
  const b = new End();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

export interface Gw {
  table: FlowTable;
  stats: NatStats;
  ring: EventRing;
  sync: SyncEndpoint;
  end: End;
}

export function gateway(
  clock: Clock,
  end: End,
  over: Partial<NatConfig> = {},
  opts: Partial<SyncOptions> = {},
  ringEvents = 4096,
): Gw {
  const stats = new NatStats();
  const ring = new EventRing(ringEvents);
  const cfg = defaultNatConfig({ natAddresses: [NAT], maxFlows: 4096, ...over });
  const table = new FlowTable(cfg, stats, ring);
  ring.attach(table);
  const sync = new SyncEndpoint(
    { table, ring, nowSec: () => clock.sec, nowMs: () => clock.ms, transport: end },
    { ...DEFAULT_SYNC, key: KEY, ...opts },
  );
  return { table, stats, ring, sync, end };
}

/** Advance the clock by one tick at a time, running both ends, `n` times. */
export function run(clock: Clock, gws: Gw[], n: number, tickMs = DEFAULT_SYNC.tickMs): void {
  for (let i = 0; i < n; i++) {
    clock.ms += tickMs;
    for (const g of gws) g.sync.tick();
    for (const g of gws) g.end.deliver();
  }
}

/** A pair: a active, b standby, heard each other. */
export function pair(
  over: Partial<NatConfig> = {},
  opts: Partial<SyncOptions> = {},
  ringEvents = 4096,
) {
  const clock = new Clock();
  const [ea, eb] = pipe();
  const a = gateway(clock, ea, over, opts, ringEvents);
  const b = gateway(clock, eb, over, opts, ringEvents);
  a.sync.setRole(Role.ACTIVE);
  return { clock, a, b };
}

/** Differences between two tables, as text (empty = the same flows, ports, states). */
export function diff(x: FlowTable, y: FlowTable, now: number): string[] {
  const out: string[] = [];
  x.forEach((f) => {
    const g = y.lookupInside(x.proto(f), x.iaddr(f), x.iport(f), x.raddr(f), x.rport(f), now);
    const name = `${x.proto(f)} ${x.iaddr(f)}:${x.iport(f)}->${x.raddr(f)}:${x.rport(f)}`;
    if (g < 0) out.push(`${name} missing`);
    else if (y.oaddr(g) !== x.oaddr(f) || y.oport(g) !== x.oport(f))
      out.push(`${name} outside ${y.oport(g)} != ${x.oport(f)}`);
    else if (y.state(g) !== x.state(f)) out.push(`${name} state ${y.state(g)} != ${x.state(f)}`);
    else if ((y.flags(g) & FlowFlag.REPLIED) !== (x.flags(f) & FlowFlag.REPLIED))
      out.push(`${name} replied differs`);
  });
  if (x.active !== y.active) out.push(`flows ${x.active} != ${y.active}`);
  return out;
}
