/**
 * Traffic for the HA lab test, run inside the lab's namespaces:
 *
 *   node ha-traffic.js server ADDR TCPPORT UDPPORT
 *     answers each TCP line and each UDP datagram with "<what was sent> <the source port seen>",
 *     so the client learns its outside (NAT) port from every answer.
 *   node ha-traffic.js client ADDR TCPPORT UDPPORT TCPCOUNT UDPCOUNT INTERVALMS DURATIONMS
 *     opens TCPCOUNT connections and UDPCOUNT sockets, sends a line / a datagram on each every
 *     INTERVALMS, and after DURATIONMS (or on SIGTERM) prints one JSON summary: per connection
 *     the outside ports seen, the longest time between two answers, errors and closes.
 *
 * Both also watch their own event loop (a 50 ms timer): a stall of this very process (CPU
 * starvation, a GC pause) would look like a gap on every connection at once. The server prints
 * `stall MS AT` (AT: Date.now()) as it happens; the client lists them in its summary.
 *
 * Bounded in count and time; talks only to ADDR (an address of the lab's own namespaces).
 */
import { createSocket } from "node:dgram";
import { createConnection, createServer } from "node:net";

const [mode, addr = "", tcpPortS = "0", udpPortS = "0", ...rest] = process.argv.slice(2);
const tcpPort = Number(tcpPortS);
const udpPort = Number(udpPortS);

interface Track {
  ports: Set<number>;
  answers: number;
  last: number;
  maxGap: number;
  /** When the longest gap ended (ms since the client started). */
  maxGapAt: number;
  errors: string[];
  closed: boolean;
  /** Gaps longer than 1.5 intervals: [ms since start when it ended, its length]. */
  gaps: [number, number][];
}

/** One connection or socket in the summary the client prints when it ends. */
export interface TrafficTrack {
  /** The outside ports the server saw it from (one, unless its mapping changed). */
  ports: number[];
  answers: number;
  maxGap: number;
  /** When the longest gap ended (ms since the client started). */
  maxGapAt: number;
  errors: string[];
  closed: boolean;
  /** Gaps longer than 1.5 intervals: [ms since start when it ended, its length]. */
  gaps: [number, number][];
}

/** The client's summary line (JSON). */
export interface TrafficSummary {
  t0: number;
  connected: number;
  /** The client's own event-loop stalls: [ms since t0, ms late]. */
  stalls: [number, number][];
  tcp: TrafficTrack[];
  udp: TrafficTrack[];
}

/** Call fn(at, ms) whenever a 50 ms timer fired more than 250 ms late. */
function watchLag(fn: (at: number, ms: number) => void): void {
  let last = Date.now();
  setInterval(() => {
    const now = Date.now();
    const late = now - last - 50;
    if (late > 250) fn(now, late);
    last = now;
  }, 50).unref();
}

if (mode === "server") {
  watchLag((at, ms) => process.stdout.write(`stall ${ms} ${at}\n`));
  createServer((s) => {
    s.on("error", () => s.destroy());
    let buf = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => {
      buf += d;
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        s.write(`${buf.slice(0, nl)} ${s.remotePort}\n`);
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
      }
    });
  }).listen(tcpPort, addr);
  const u = createSocket("udp4");
  u.on("message", (m, r) => u.send(`${m.toString()} ${r.port}`, r.port, r.address));
  u.bind(udpPort, addr);
  process.stdout.write("ready\n");
} else if (mode === "client") {
  const [tcpN = "0", udpN = "0", intervalS = "100", durationS = "10000"] = rest;
  const interval = Number(intervalS);
  const t0 = Date.now();
  const mk = (): Track => ({
    ports: new Set(),
    answers: 0,
    last: Date.now(),
    maxGap: 0,
    maxGapAt: 0,
    errors: [],
    closed: false,
    gaps: [],
  });
  const answered = (t: Track, port: number) => {
    const now = Date.now();
    const gap = now - t.last;
    if (t.answers > 0 && gap > t.maxGap) {
      t.maxGap = gap;
      t.maxGapAt = now - t0;
    }
    if (t.answers > 0 && gap > 1.5 * interval) t.gaps.push([now - t0, gap]);
    t.last = now;
    t.answers++;
    if (Number.isInteger(port)) t.ports.add(port);
  };
  const tcp: Track[] = [];
  const udp: Track[] = [];
  const timers: ReturnType<typeof setInterval>[] = [];
  const closers: (() => void)[] = [];
  let connected = 0;
  const stalls: [number, number][] = [];
  watchLag((at, ms) => stalls.push([at - t0, ms]));
  for (let i = 0; i < Number(tcpN); i++) {
    const t = mk();
    tcp.push(t);
    const s = createConnection({ host: addr, port: tcpPort }, () => {
      connected++;
      let n = 0;
      timers.push(setInterval(() => s.write(`${i}.${n++}\n`), interval));
    });
    s.setNoDelay(true);
    s.setEncoding("utf8");
    let buf = "";
    s.on("data", (d: string) => {
      buf += d;
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        answered(t, Number(buf.slice(0, nl).split(" ")[1]));
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
      }
    });
    s.on("error", (e: NodeJS.ErrnoException) => t.errors.push(e.code ?? e.message));
    s.on("close", () => {
      t.closed = true;
    });
    closers.push(() => s.destroy());
  }
  for (let i = 0; i < Number(udpN); i++) {
    const t = mk();
    udp.push(t);
    const u = createSocket("udp4");
    u.on("message", (m) => answered(t, Number(m.toString().split(" ")[1])));
    u.on("error", (e: NodeJS.ErrnoException) => t.errors.push(e.code ?? e.message));
    let n = 0;
    timers.push(setInterval(() => u.send(`u${i}.${n++}`, udpPort, addr), interval));
    closers.push(() => u.close());
  }
  const finish = () => {
    for (const x of timers) clearInterval(x);
    const now = Date.now();
    const show = (t: Track): TrafficTrack => ({
      ports: [...t.ports],
      answers: t.answers,
      maxGap: Math.max(t.maxGap, t.answers > 0 ? now - t.last : 0),
      maxGapAt: t.maxGapAt,
      errors: t.errors,
      closed: t.closed,
      gaps: t.gaps,
    });
    process.stdout.write(
      `${JSON.stringify({ t0, connected, stalls, tcp: tcp.map(show), udp: udp.map(show) })}\n`,
    );
    for (const c of closers) c();
    setTimeout(() => process.exit(0), 100);
  };
  setTimeout(finish, Number(durationS));
  process.on("SIGTERM", finish);
  // Progress for the test: answers so far, on SIGUSR2.
  process.on("SIGUSR2", () => {
    const sum = (a: Track[]) => a.reduce((x, t) => x + t.answers, 0);
    process.stderr.write(`progress ${connected} ${sum(tcp)} ${sum(udp)}\n`);
  });
} else {
  process.stderr.write("usage: ha-traffic.js server|client ...\n");
  process.exit(2);
}
