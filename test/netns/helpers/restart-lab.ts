/**
 * What test/netns/restart.test.ts and test/bench/restart.ts share: a lab (helpers/lab.ts) with
 * the restart peer's echo server on the internet host, traffic through the daemon around a
 * restart, and the two ways of restarting (docs/operations.md §Restart):
 *
 *   sigterm   stop (SIGTERM: the plumbing and the TUN are removed) and start again
 *   handover  `tunnat restart`: the running daemon hands the TUN, plumbing and table over to a
 *             new process
 *
 * Each restart returns what the daemons logged about it (their timelines) and the TUN's drop
 * counter across it. Only the lab's own addresses are used; the client is bounded in time.
 */
import { join } from "node:path";
import { type Background, BIN, HELPERS, Lab, sleep } from "./lab.js";

// HELPERS is the source folder (for .py files); the compiled peer sits under dist/.
const PEER = join(HELPERS, "..", "..", "..", "dist", "test", "netns", "helpers", "restart-peer.js");
const PORT = 7777;

interface ClientResult {
  tcpOpen: number;
  tcpErrors: string[];
  tcpClosed: number;
  tcpMaxWaitMs: number;
  udpSent: number;
  udpAnswered: number;
  udpMaxSilenceMs: number;
  tcpStaleAtEnd: number;
  udpStaleAtEnd: number;
  /** The probe (PROBE_MS > 0): datagrams sent, answered, and the longest time between echoes. */
  probeSent: number;
  probeAnswered: number;
  probeMaxGapMs: number;
}

export interface TrafficResult {
  res: ClientResult;
  /** TCP connections the server accepted. */
  accepts: number;
  /** UDP client id -> the outside ports the server saw it from (the probe is "probe"). */
  udpPorts: Map<string, Set<number>>;
}

/** What a restart logged and counted. */
export interface Restart {
  /** Wall ms from the first step (signal or `tunnat restart`) until the new daemon answered. */
  ms: number;
  /** The old daemon's "stop timeline" (ms since its stop began), if it logged one. */
  stop: Record<string, number> | null;
  /** The new daemon's "forwarding" timeline (ms since its exec). */
  start: Record<string, number> | null;
  /** The old daemon stopped reading -> the new one read its first packet (CLOCK_MONOTONIC). */
  daemonGapMs: number | null;
  /** The new daemon's restore line ("restored N flows ..."), or "". */
  restoreLine: string;
  /** The TUN's tx_dropped (packets the kernel could not queue for the daemon) during it. */
  tunDropped: number;
  /** The TUN's ifindex before and after (equal: it was kept). */
  ifindex: [number, number];
}

type LogLine = Record<string, unknown> & { msg?: string; pid?: number };

function logLines(out: string): LogLine[] {
  const lines: LogLine[] = [];
  for (const l of out.split("\n")) {
    if (!l.startsWith("{")) continue;
    try {
      lines.push(JSON.parse(l) as LogLine);
    } catch {
      // not a log line
    }
  }
  return lines;
}

export class RestartLab {
  private constructor(
    readonly lab: Lab,
    readonly server: Background,
    readonly srvAddr: string,
  ) {}

  static async up(prefix: string): Promise<RestartLab> {
    const lab = await Lab.up(prefix);
    const server = lab.spawn("inet", [process.execPath, PEER, "server", String(PORT)]);
    for (let i = 0; i < 50 && !server.out().includes("listening"); i++) await sleep(100);
    return new RestartLab(lab, server, lab.inet[0] ?? "");
  }

  down(): Promise<void> {
    return this.lab.down();
  }

  /** Server events since `from` (an offset into its output). */
  private events(from: number) {
    return this.server
      .out()
      .slice(from)
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { accept?: number; udp?: string; port?: number });
  }

  /**
   * Traffic from 1.5 s before `during` until well after it: `during` returns how long forwarding
   * may have stopped, and a TCP sender backs off exponentially while it is stopped, so its next
   * retransmission may come up to that long after forwarding resumes; then 2.5 s more. At most
   * `seconds` in all, so a machine too slow to restart ends the run instead of hanging it.
   */
  async withTraffic(
    o: { seconds: number; tcp: number; udp: number; probeMs?: number },
    during: () => Promise<number>,
  ): Promise<TrafficResult> {
    const mark = this.server.out().length;
    const client = this.lab.spawn("p1", [
      process.execPath,
      PEER,
      "client",
      this.srvAddr,
      String(PORT),
      String(o.tcp),
      String(o.udp),
      String(o.seconds),
      String(o.probeMs ?? 0),
    ]);
    await sleep(1500);
    const outage = await during();
    await sleep(outage + 2500);
    client.child.kill("SIGTERM");
    await client.exited;
    const line = client.out().trim().split("\n").pop() ?? "{}";
    const res = JSON.parse(line) as ClientResult;
    const ev = this.events(mark);
    const udpPorts = new Map<string, Set<number>>();
    for (const e of ev)
      if (e.udp !== undefined) {
        const s = udpPorts.get(e.udp) ?? new Set<number>();
        s.add(e.port ?? 0);
        udpPorts.set(e.udp, s);
      }
    return { res, accepts: ev.filter((e) => e.accept !== undefined).length, udpPorts };
  }

  /** The TUN's ifindex and tx_dropped in the nat namespace ([0, 0] when it is not there). */
  async tunCounters(): Promise<[number, number]> {
    const r = await this.lab.exec("nat", ["ip", "-s", "-j", "link", "show", "dev", "tunnat0"]);
    if (r.code !== 0) return [0, 0];
    const j = JSON.parse(r.stdout) as {
      ifindex?: number;
      stats64?: { tx?: { dropped?: number } };
    }[];
    return [j[0]?.ifindex ?? 0, j[0]?.stats64?.tx?.dropped ?? 0];
  }

  /** Stop (SIGTERM) and start again with `flags`. */
  async sigterm(flags: string[]): Promise<Restart> {
    const old = this.lab.daemon;
    const [if0, drop0] = await this.tunCounters();
    const t0 = Date.now();
    const code = await this.lab.stopDaemon();
    if (code !== 0) throw new Error(`the old daemon exited ${code}`);
    const d = await this.lab.startDaemon(flags);
    const ms = Date.now() - t0;
    const oldPid = old?.pid ?? old?.child.pid;
    const stopLine = logLines(old?.out() ?? "").find(
      (l) => l.pid === oldPid && l.msg === "stop timeline",
    );
    const r = await this.finish(d.out(), d.child.pid ?? 0, ms, drop0);
    const [if1] = await this.tunCounters();
    r.ifindex = [if0, if1];
    // A new TUN counts from 0; what the old one's absence cost is not counted by any TUN.
    if (if0 !== if1) r.tunDropped = Number.NaN;
    r.stop = (stopLine?.timeline as Record<string, number> | undefined) ?? null;
    const stoppedReading = Number(stopLine?.stoppedReading ?? Number.NaN);
    const first = await this.firstBatch(d.out(), d.child.pid ?? 0);
    r.daemonGapMs =
      Number.isFinite(stoppedReading) && first !== null ? first - stoppedReading : null;
    return r;
  }

  /** `tunnat restart`: hand over to a new process; the lab follows the successor. */
  async handover(): Promise<Restart & { successor: number; verb: string }> {
    const old = this.lab.daemon;
    if (!old) throw new Error("no daemon running");
    const [if0, drop0] = await this.tunCounters();
    const t0 = Date.now();
    const v = await this.lab.exec(
      "nat",
      [process.execPath, BIN, "restart", "--json", "--socket", this.lab.controlSocket],
      { timeoutMs: 90_000 },
    );
    const ms = Date.now() - t0;
    if (v.code !== 0) throw new Error(`tunnat restart exited ${v.code}: ${v.stderr}`);
    const j = JSON.parse(v.stdout) as { successor: number };
    const oldCode = await old.exited;
    if (oldCode !== 0) throw new Error(`the old daemon exited ${oldCode}`);
    this.lab.successor(j.successor);
    const r = await this.finish(old.out(), j.successor, ms, drop0);
    const [if1] = await this.tunCounters();
    r.ifindex = [if0, if1];
    const handed = logLines(old.out()).find((l) => l.msg === `handed over to pid ${j.successor}`);
    r.stop = (handed?.stop as Record<string, number> | undefined) ?? null;
    const first = await this.firstBatch(old.out(), j.successor);
    const stoppedReading = r.start?.predecessorStoppedReading;
    // Both on CLOCK_MONOTONIC: the successor's timeline is relative to its exec.
    const zero = Number(
      logLines(old.out()).find((l) => l.pid === j.successor && l.msg === "forwarding")
        ?.processStart,
    );
    r.daemonGapMs =
      first !== null && stoppedReading !== undefined ? first - (stoppedReading + zero) : null;
    return { ...r, successor: j.successor, verb: v.stdout.trim() };
  }

  /** The "first packet read" time of daemon `pid` on CLOCK_MONOTONIC (null: none logged). */
  private async firstBatch(out: string, pid: number): Promise<number | null> {
    for (let i = 0; i < 40; i++) {
      const l = logLines(this.lab.daemon?.out() ?? out).find(
        (x) => x.pid === pid && x.msg === "first packet read",
      );
      if (l) return Number(l.at);
      await sleep(50);
    }
    return null;
  }

  private async finish(out: string, pid: number, ms: number, drop0: number): Promise<Restart> {
    const lines = logLines(out).filter((l) => l.pid === pid);
    const fwd = lines.find((l) => l.msg === "forwarding");
    const [, drop1] = await this.tunCounters();
    return {
      ms,
      stop: null,
      start: (fwd?.timeline as Record<string, number> | undefined) ?? null,
      daemonGapMs: null,
      restoreLine:
        out.split("\n").find((l) => l.includes(`"pid":${pid},`) && l.includes("restored")) ?? "",
      tunDropped: drop1 - drop0,
      ifindex: [0, 0],
    };
  }
}
