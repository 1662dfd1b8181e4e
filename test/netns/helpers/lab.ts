/**
 * A reusable lab fixture for the integration tests: the namespaces of lab/README.md (p1, p2 --
 * br-in [nat: tunnat0] out0 -- inet), built by labUp() with names `<prefix>-<pid>-*`, the real
 * daemon (`node bin/tunnat.js run`) inside the nat namespace, helpers to run commands in any
 * namespace, background servers that are killed by pid on down(), and the daemon's counters.
 *
 * Everything here talks only to addresses of namespaces this process made. down() is idempotent
 * and safe to call from t.teardown() even when up() failed half-way (labUp removes its own mess).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { daemonArgs, type LabFile, type LabState, labDown, labUp } from "../../../src/cli/lab.js";
import { packageRoot } from "../../../src/io/package-root.js";

export type Role = "p1" | "p2" | "nat" | "inet";

const ROOT = packageRoot() ?? process.cwd();
export const BIN = join(ROOT, "bin", "tunnat.js");
/** Scapy scripts live next to this file's source (tsc does not copy .py files into dist/). */
export const HELPERS = join(ROOT, "test", "netns", "helpers");

const SIGNALS: Partial<Record<NodeJS.Signals, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGALRM: 14,
  SIGTERM: 15,
};

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from spawn to exit. */
  ms: number;
}

function syncOk(argv: string[]): boolean {
  try {
    execFileSync(argv[0] ?? "", argv.slice(1), { stdio: "ignore", timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** The first python3 that imports scapy (Debian's python3-scapy is for /usr/bin/python3). */
export function scapyPython(): string | null {
  for (const py of ["/usr/bin/python3", "python3"])
    if (syncOk([py, "-c", "import scapy.all"])) return py;
  return null;
}

/**
 * Why this machine cannot run a lab test needing `tools`, or null when it can. "scapy" stands for
 * a python3 with scapy. Names the first missing thing, for t.plan(0, reason).
 */
export function missing(tools: string[]): string | null {
  if (process.getuid?.() !== 0) return "needs root (ip netns, TUN, tcpdump)";
  for (const tool of ["ip", "curl", ...tools]) {
    if (tool === "scapy") {
      if (!scapyPython()) return "needs python3 with scapy (apt-get install python3-scapy)";
    } else if (!syncOk(["sh", "-c", `command -v ${tool}`])) return `needs ${tool} on PATH`;
  }
  const probe = `tn-${process.pid}-probe`;
  if (!syncOk(["ip", "netns", "add", probe])) return "cannot create network namespaces";
  syncOk(["ip", "netns", "del", probe]);
  if (!existsSync("/dev/net/tun")) return "needs /dev/net/tun";
  return null;
}

export interface Background {
  child: ChildProcess;
  /** stdout and stderr so far. */
  out(): string;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it has exited. */
  stop(graceMs?: number): Promise<number | null>;
}

export interface Daemon extends Background {
  flags: string[];
  /** The daemon's pid when it is not `child` (a handover restart's successor). */
  pid?: number;
}

export interface Capture extends Background {
  /** The pcap file (inside the lab's scratch directory). */
  file: string;
}

function track(child: ChildProcess): Background {
  let out = "";
  child.stdout?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  child.stderr?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  let code: number | null | undefined;
  const exited = new Promise<number | null>((r) =>
    child.on("exit", (c, sig) => {
      code = c ?? (sig ? -1 : null);
      r(code);
    }),
  );
  // "error" (spawn failure) must not crash the test process.
  child.on("error", (e) => {
    out += `spawn error: ${String(e)}\n`;
  });
  return {
    child,
    out: () => out,
    exited,
    async stop(graceMs = 2000) {
      if (code !== undefined) return code;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const c = await exited;
      clearTimeout(timer);
      return c;
    },
  };
}

export class Lab {
  readonly procs: Background[] = [];
  daemon: Daemon | undefined;
  /** A scratch directory removed by down(). */
  readonly tmp = mkdtempSync(join(tmpdir(), "tunnat-labfixture-"));
  /** down() has begun (it is idempotent). */
  private downStarted = false;
  /** Everything is removed (by down() or by the synchronous last resort). */
  private cleaned = false;
  private captures = 0;
  /**
   * SIGTERM/SIGINT/SIGHUP, and SIGALRM (tap's timeout, followed by SIGKILL 500 ms later): clean up
   * synchronously, since an async down() would not finish before the SIGKILL.
   */
  private readonly onSignal = (sig: NodeJS.Signals) => {
    this.onExit();
    process.exit(128 + (SIGNALS[sig] ?? 15));
  };
  /** Last resort when the process exits without down() (tap timeout, crash): sync cleanup. */
  private readonly onExit = () => {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const p of this.procs) if (p.child.exitCode === null) p.child.kill("SIGKILL");
    for (const n of Object.values(this.state.ns)) {
      try {
        const pids = execFileSync("ip", ["netns", "pids", n], { encoding: "utf8" });
        for (const p of pids.split(/\s+/).filter(Boolean))
          if (Number(p) > 1 && Number(p) !== process.pid) process.kill(Number(p), "SIGKILL");
      } catch {
        // namespace already gone
      }
      syncOk(["ip", "netns", "del", n]);
    }
    for (const f of [
      this.stateFile,
      this.controlSocket,
      `${this.controlSocket}.plumbing.json`,
      `${this.controlSocket}.guard.json`,
    ])
      rmSync(f, { force: true });
    rmSync(this.tmp, { recursive: true, force: true });
  };

  private constructor(
    readonly lab: LabFile,
    readonly state: LabState,
    private readonly stateFile: string,
  ) {
    for (const sig of Object.keys(SIGNALS)) process.once(sig, this.onSignal);
    process.on("exit", this.onExit);
  }

  /** Build the namespaces (names include this process's pid). */
  static async up(prefix: string): Promise<Lab> {
    const r = await labUp({ prefix, print: false });
    return new Lab(r.lab, r.state, r.stateFile);
  }

  get ns(): Record<Role, string> {
    return this.state.ns;
  }
  get p1(): string {
    return this.lab.inside.hosts.p1 ?? "";
  }
  get p2(): string {
    return this.lab.inside.hosts.p2 ?? "";
  }
  get gateway(): string {
    return this.lab.inside.gateway;
  }
  get natAddress(): string {
    return this.lab.outside.natAddress;
  }
  /** The internet host's addresses (.10 and .11 in lab.json). */
  get inet(): string[] {
    return this.lab.outside.inet;
  }
  get controlSocket(): string {
    return join(this.lab.stateDir, `${this.state.name}.sock`);
  }

  /** Run argv in a namespace; never throws on a non-zero exit. Killed after timeoutMs. */
  exec(
    role: Role,
    argv: string[],
    opts: { timeoutMs?: number; input?: string } = {},
  ): Promise<ExecResult> {
    const t0 = Date.now();
    return new Promise((resolve) => {
      const child = spawn("ip", ["netns", "exec", this.ns[role], ...argv], {
        stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout?.on("data", (b: Buffer) => {
        stdout += b.toString();
      });
      child.stderr?.on("data", (b: Buffer) => {
        stderr += b.toString();
      });
      if (opts.input !== undefined) child.stdin?.end(opts.input);
      const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
      child.on("error", (e) => {
        stderr += String(e);
      });
      child.on("close", (code, sig) => {
        clearTimeout(timer);
        resolve({ code: code ?? (sig ? -1 : null), stdout, stderr, ms: Date.now() - t0 });
      });
    });
  }

  /** Run argv in a namespace and return stdout; throws with stderr on a non-zero exit. */
  async sh(role: Role, argv: string[], timeoutMs = 30_000): Promise<string> {
    const r = await this.exec(role, argv, { timeoutMs });
    if (r.code !== 0)
      throw new Error(`${role}: ${argv.join(" ")} exited ${r.code}: ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  /** Start argv in a namespace in the background; down() kills it if the test did not. */
  spawn(role: Role, argv: string[]): Background {
    const child = spawn("ip", ["netns", "exec", this.ns[role], ...argv], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const b = track(child);
    this.procs.push(b);
    return b;
  }

  /**
   * Start `tunnat run` in the nat namespace with the lab's flags plus `flags` and wait for
   * /healthz to answer 200 (at most ~10 s). Throws with the daemon's log when it does not.
   */
  async startDaemon(flags: string[] = []): Promise<Daemon> {
    if (this.daemon) await this.stopDaemon();
    const argv = [process.execPath, BIN, "run", ...daemonArgs(this.lab, this.controlSocket)];
    // Each start begins with an empty table unless a test asks for the state file (restart.test).
    if (!flags.includes("--table-state-file")) argv.push("--table-state-file", "none");
    const b = this.spawn("nat", [...argv, ...flags]);
    const d: Daemon = Object.assign(b, { flags });
    this.daemon = d;
    const url = `http://${this.lab.daemon.metrics}/healthz`;
    for (let i = 0; i < 100; i++) {
      if (d.child.exitCode !== null) break;
      const r = await this.exec("nat", ["curl", "-sf", "-m", "1", url], { timeoutMs: 3000 });
      if (r.code === 0) return d;
      await sleep(100);
    }
    const log = d.out();
    await this.stopDaemon();
    throw new Error(`tunnat did not become healthy; its output:\n${log.slice(-3000)}`);
  }

  /**
   * Start tcpdump on `iface` of a namespace, writing every packet at once (-U) to a pcap file in
   * the scratch directory, and wait until it is listening. Stop it with stop() before reading.
   */
  async capture(role: Role, iface: string, filter: string): Promise<Capture> {
    const file = join(this.tmp, `cap-${role}-${this.captures++}.pcap`);
    // -Z root: tcpdump would otherwise drop to its own user and fail to write into tmp (0700).
    // --immediate-mode: without it tcpdump -w reads the ring in 1 s batches and loses what is
    // still buffered when stopped ("2 packets received by filter, 0 captured").
    const b = this.spawn(role, [
      "tcpdump",
      "--immediate-mode",
      "-Z",
      "root",
      "-U",
      "-n",
      "-i",
      iface,
      "-w",
      file,
      filter,
    ]);
    for (let i = 0; i < 100 && !/listening on/.test(b.out()); i++) {
      if (b.child.exitCode !== null) break;
      await sleep(50);
    }
    if (!/listening on/.test(b.out())) {
      await b.stop(500);
      throw new Error(`tcpdump in ${role} did not start: ${b.out()}`);
    }
    const stop = b.stop;
    // Give the last packets in flight 200 ms to be written before stopping.
    const delayedStop = async (graceMs?: number) => {
      if (b.child.exitCode === null) await sleep(200);
      return stop(graceMs);
    };
    return Object.assign(b, { file, stop: delayedStop });
  }

  /** One line per packet of a pcap file (tcpdump -n -r; reading a file sends nothing). */
  async readPcap(file: string, extra: string[] = []): Promise<string[]> {
    const r = await new Promise<string>((resolve) => {
      const child = spawn("tcpdump", ["-n", "-r", file, ...extra], {
        stdio: ["ignore", "pipe", "ignore"],
      });
      let out = "";
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
      });
      child.on("close", () => resolve(out));
      child.on("error", () => resolve(out));
    });
    return r.split("\n").filter((l) => /^\d/.test(l));
  }

  /** The MAC address of an interface in a namespace. */
  async mac(role: Role, iface: string): Promise<string> {
    const j = JSON.parse(await this.sh(role, ["ip", "-j", "link", "show", iface])) as {
      address: string;
    }[];
    return j[0]?.address ?? "";
  }

  /** SIGTERM the daemon (ip netns exec execs node, so the pid is the daemon's); exit code. */
  async stopDaemon(): Promise<number | null> {
    const d = this.daemon;
    this.daemon = undefined;
    if (!d) return null;
    return d.stop(3000);
  }

  /**
   * After a handover restart (`tunnat restart`) the daemon is `pid`, the old process's successor:
   * not a child of ours (its output still comes through the old one's pipes). From here on
   * stopDaemon() and down() signal it by pid; the exit code is the one its "stopped" line gives.
   */
  successor(pid: number): Daemon {
    const old = this.daemon;
    if (!old) throw new Error("no daemon to succeed");
    const running = () => {
      try {
        // A zombie (state Z) has exited: its parent, the old daemon, is gone.
        return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    };
    let code: number | null | undefined;
    const exited = (async () => {
      while (running()) await sleep(50);
      await sleep(100); // its last lines may still be in the pipe
      const line = old
        .out()
        .split("\n")
        .find((l) => l.includes(`"pid":${pid},`) && l.includes('"msg":"stopped"'));
      const m = /"code":(\d+)/.exec(line ?? "");
      code = m ? Number(m[1]) : null;
      return code;
    })();
    const d: Daemon = {
      child: old.child,
      out: old.out,
      exited,
      flags: old.flags,
      pid,
      async stop(graceMs = 2000) {
        if (code !== undefined) return code;
        if (running()) process.kill(pid, "SIGTERM");
        const timer = setTimeout(() => {
          if (running()) process.kill(pid, "SIGKILL");
        }, graceMs);
        const c = await exited;
        clearTimeout(timer);
        return c;
      },
    };
    this.daemon = d;
    return d;
  }

  /** GET a path of the daemon's HTTP listener from the nat namespace: curl's exit and body. */
  private async getDaemon(path: string, seconds: number): Promise<ExecResult> {
    const url = `http://${this.lab.daemon.metrics}${path}`;
    return this.exec("nat", ["curl", "-sf", "-m", String(seconds), url], {
      timeoutMs: seconds * 1000 + 3000,
    });
  }

  /** Whether the daemon answers `path` (/healthz, /readyz) with a 2xx within `seconds`. */
  async daemonAnswers(path: string, seconds = 2): Promise<boolean> {
    return (await this.getDaemon(path, seconds)).code === 0;
  }

  /** The Prometheus text of the daemon's /metrics ("" when it does not answer). */
  async metricsText(): Promise<string> {
    const r = await this.getDaemon("/metrics", 2);
    return r.code === 0 ? r.stdout : "";
  }

  /**
   * The daemon's drop counters by reason, from /metrics (any `tunnat_*drop*` series with a
   * `reason` label) or else from `tunnat stats --json` (a `drops` object). null when neither
   * source exposes them (yet).
   */
  async drops(): Promise<Record<string, number> | null> {
    const text = await this.metricsText();
    const found: Record<string, number> = {};
    let any = false;
    for (const line of text.split("\n")) {
      // Drops by reason, and inbound packets refused (unsolicited, filtered), kept apart from the
      // drops in the metrics (a CloudWatch-style "drops > 0" alarm must not fire on noise).
      const m =
        /^tunnat_(?:[a-z_]*drop[a-z_]*|inbound_refused_packets_total)\{[^}]*reason="([^"]+)"[^}]*\}\s+([0-9.e+]+)/.exec(
          line,
        );
      if (!m) continue;
      any = true;
      found[m[1] ?? ""] = (found[m[1] ?? ""] ?? 0) + Number(m[2]);
    }
    if (any) return found;
    const r = await this.exec("nat", [
      process.execPath,
      BIN,
      "stats",
      "--json",
      "--socket",
      this.controlSocket,
    ]);
    if (r.code !== 0) return null;
    try {
      const j = JSON.parse(r.stdout) as { drops?: Record<string, number> };
      return j.drops && typeof j.drops === "object" ? { ...j.drops } : null;
    } catch {
      return null;
    }
  }

  /** Stop every background process and the daemon, then remove the namespaces. Idempotent. */
  async down(): Promise<void> {
    if (this.downStarted) return;
    this.downStarted = true;
    await this.stopDaemon().catch(() => undefined);
    await Promise.all(this.procs.map((p) => p.stop(500).catch(() => undefined)));
    await labDown({ state: this.state, stateFile: this.stateFile, print: false });
    rmSync(this.tmp, { recursive: true, force: true });
    this.cleaned = true;
    // Only now: a signal during the awaits above still gets the synchronous cleanup.
    for (const sig of Object.keys(SIGNALS)) process.off(sig, this.onSignal);
    process.off("exit", this.onExit);
  }
}

/** Sum of drop counters over all reasons. */
export function totalDrops(d: Record<string, number> | null): number {
  return d ? Object.values(d).reduce((a, b) => a + b, 0) : 0;
}
