/**
 * The HA lab: two gateways on shared inside and outside L2 segments, a sync link between them,
 * keepalived (VRRP) on the inside segment moving the inside gateway address (tunnat follows it
 * through keepalived's notify FIFO), and tunnat in each
 * gateway namespace. Every name carries `<prefix>-<pid>`; down() (also run synchronously on exit
 * or a signal) kills every process by pid and deletes the namespaces.
 *
 *      p1 10.0.1.2 ─┐                                   ┌─ inet 203.0.113.10
 *                   │ ns sw:  br-in          br-out      │
 *   ga in0 10.0.1.4 ┤  VIP 10.0.1.1 (VRRP)    ├ ga out0 203.0.113.2
 *   gb in0 10.0.1.5 ┘                         └ gb out0 203.0.113.3
 *   ga sync0 192.0.2.1/30 ─────────────────── gb sync0 192.0.2.2/30
 *   NAT address 203.0.113.1: proxy ARP on the active's out0 (gratuitous ARP on takeover)
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BIN, sleep } from "./lab.js";

export type Node = "sw" | "p1" | "ga" | "gb" | "inet";
export type Gw = "ga" | "gb";

export const A = {
  inside: "10.0.1.0/24",
  vip: "10.0.1.1",
  p1: "10.0.1.2",
  ga: "10.0.1.4",
  gb: "10.0.1.5",
  nat: "203.0.113.1",
  gaOut: "203.0.113.2",
  gbOut: "203.0.113.3",
  inet: "203.0.113.10",
  gaSync: "192.0.2.1",
  gbSync: "192.0.2.2",
  syncPort: 7470,
  metrics: "127.0.0.1:9469",
};

function ipSync(args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"], timeout: 10_000 });
}

export interface Proc {
  child: ChildProcess;
  out(): string;
  exited: Promise<number | null>;
  stop(graceMs?: number): Promise<number | null>;
}

function track(child: ChildProcess): Proc {
  let out = "";
  child.stdout?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  child.stderr?.on("data", (b: Buffer) => {
    out += b.toString();
  });
  child.on("error", (e) => {
    out += `spawn error: ${String(e)}\n`;
  });
  let code: number | null | undefined;
  const exited = new Promise<number | null>((r) =>
    child.on("exit", (c, sig) => {
      code = c ?? (sig ? -1 : null);
      r(code);
    }),
  );
  return {
    child,
    out: () => out,
    exited,
    async stop(graceMs = 2000) {
      if (code !== undefined) return code;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const c = await exited;
      clearTimeout(t);
      return c;
    },
  };
}

export class HaLab {
  readonly name: string;
  readonly ns: Record<Node, string>;
  readonly tmp = mkdtempSync(join(tmpdir(), "tunnat-ha-"));
  readonly procs: Proc[] = [];
  readonly daemons: Partial<Record<Gw, Proc>> = {};
  readonly keepalived: Partial<Record<Gw, Proc>> = {};
  private cleaned = false;
  private readonly onExit = () => this.cleanupSync();
  private readonly onSignal = () => {
    this.cleanupSync();
    process.exit(143);
  };

  constructor(prefix: string) {
    this.name = `${prefix}-${process.pid}`;
    this.ns = {
      sw: `${this.name}-sw`,
      p1: `${this.name}-p1`,
      ga: `${this.name}-ga`,
      gb: `${this.name}-gb`,
      inet: `${this.name}-inet`,
    };
    process.on("exit", this.onExit);
    for (const s of ["SIGTERM", "SIGINT", "SIGHUP", "SIGALRM"]) process.once(s, this.onSignal);
  }

  up(): void {
    const n = this.ns;
    try {
      for (const x of Object.values(n)) {
        ipSync(["netns", "add", x]);
        ipSync(["-n", x, "link", "set", "lo", "up"]);
      }
      for (const br of ["br-in", "br-out"]) {
        ipSync(["-n", n.sw, "link", "add", br, "type", "bridge"]);
        ipSync(["-n", n.sw, "link", "set", br, "up"]);
      }
      const port = (node: Node, ifname: string, swName: string, br: string, cidr: string) => {
        ipSync([
          "-n",
          n[node],
          "link",
          "add",
          ifname,
          "type",
          "veth",
          "peer",
          "name",
          swName,
          "netns",
          n.sw,
        ]);
        ipSync(["-n", n.sw, "link", "set", swName, "master", br, "up"]);
        ipSync(["-n", n[node], "addr", "add", cidr, "dev", ifname]);
        ipSync(["-n", n[node], "link", "set", ifname, "up"]);
      };
      port("p1", "eth0", "p1", "br-in", `${A.p1}/24`);
      port("ga", "in0", "ga-in", "br-in", `${A.ga}/24`);
      port("gb", "in0", "gb-in", "br-in", `${A.gb}/24`);
      port("ga", "out0", "ga-out", "br-out", `${A.gaOut}/24`);
      port("gb", "out0", "gb-out", "br-out", `${A.gbOut}/24`);
      port("inet", "eth0", "inet", "br-out", `${A.inet}/24`);
      ipSync(["-n", n.p1, "route", "add", "default", "via", A.vip]);
      ipSync([
        "-n",
        n.ga,
        "link",
        "add",
        "sync0",
        "type",
        "veth",
        "peer",
        "name",
        "sync0",
        "netns",
        n.gb,
      ]);
      ipSync(["-n", n.ga, "addr", "add", `${A.gaSync}/30`, "dev", "sync0"]);
      ipSync(["-n", n.gb, "addr", "add", `${A.gbSync}/30`, "dev", "sync0"]);
      ipSync(["-n", n.ga, "link", "set", "sync0", "up"]);
      ipSync(["-n", n.gb, "link", "set", "sync0", "up"]);
      for (const g of ["ga", "gb"] as const) {
        execFileSync("ip", ["netns", "exec", n[g], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        execFileSync("ip", [
          "netns",
          "exec",
          n[g],
          "sysctl",
          "-q",
          "-w",
          "net.ipv4.neigh.out0.proxy_delay=0",
        ]);
      }
      // The upstream host takes gratuitous ARP for addresses it has no entry for yet, too.
      execFileSync("ip", [
        "netns",
        "exec",
        n.inet,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.conf.eth0.arp_accept=1",
      ]);
      const key = join(this.tmp, "ha.key");
      writeFileSync(key, "lab-shared-key-0123456789abcdef-0123456789abcdef\n");
      chmodSync(key, 0o600);
      for (const g of ["ga", "gb"] as const) this.writeConfigs(g, key);
    } catch (e) {
      this.cleanupSync();
      throw e;
    }
  }

  sock(g: Gw): string {
    return join(this.tmp, `${g}.sock`);
  }

  private writeConfigs(g: Gw, key: string): void {
    const other = g === "ga" ? "gb" : "ga";
    const ha = {
      arbiter: "keepalived",
      listen: `${g === "ga" ? A.gaSync : A.gbSync}:${A.syncPort}`,
      peer: `${other === "ga" ? A.gaSync : A.gbSync}:${A.syncPort}`,
      keyFile: key,
      heartbeatMs: 200,
      misses: 5,
      priority: g === "ga" ? 150 : 100,
      garp: true,
      keepalivedFifo: join(this.tmp, `${g}.fifo`),
      keepalivedInstance: "inside",
    };
    writeFileSync(join(this.tmp, `${g}-ha.json`), JSON.stringify(ha, null, 2));
    // nopreempt (both BACKUP): a gateway that comes back stays standby until the active fails,
    // so it never takes over before its table has caught up.
    writeFileSync(
      join(this.tmp, `${g}-keepalived.conf`),
      `global_defs {
  router_id ${this.name}-${g}
  script_user root
  vrrp_version 3
  dynamic_interfaces
  vrrp_garp_master_repeat 2
  vrrp_notify_fifo ${join(this.tmp, `${g}.fifo`)}
}
vrrp_instance inside {
  state BACKUP
  nopreempt
  interface in0
  virtual_router_id 51
  priority ${g === "ga" ? 150 : 100}
  advert_int 0.2
  track_interface {
    tunnat0
  }
  virtual_ipaddress {
    ${A.vip}/24 dev in0
  }
}
`,
    );
  }

  /** Run argv in a namespace; never throws. */
  exec(
    node: Node,
    argv: string[],
    timeoutMs = 30_000,
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn("ip", ["netns", "exec", this.ns[node], ...argv], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (b: Buffer) => {
        stdout += b.toString();
      });
      child.stderr.on("data", (b: Buffer) => {
        stderr += b.toString();
      });
      const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      child.on("close", (code, sig) => {
        clearTimeout(t);
        resolve({ code: code ?? (sig ? -1 : null), stdout, stderr });
      });
    });
  }

  spawn(node: Node, argv: string[]): Proc {
    const p = track(
      spawn("ip", ["netns", "exec", this.ns[node], ...argv], { stdio: ["ignore", "pipe", "pipe"] }),
    );
    this.procs.push(p);
    return p;
  }

  /** Start tunnat in a gateway as one of the pair (and `extra` flags) and wait for /healthz. */
  async startDaemon(g: Gw, extra: string[] = []): Promise<Proc> {
    const argv = [
      process.execPath,
      BIN,
      "run",
      "--inside",
      A.inside,
      "--inside-interface",
      "in0",
      "--nat-address",
      A.nat,
      "--outside-interface",
      "out0",
      "--tun",
      "tunnat0",
      "--metrics",
      A.metrics,
      "--control-socket",
      this.sock(g),
      "--state-file",
      join(this.tmp, `${g}.plumbing.json`),
      "--ha",
      join(this.tmp, `${g}-ha.json`),
      ...extra,
    ];
    const d = this.spawn(g, argv);
    this.daemons[g] = d;
    for (let i = 0; i < 100; i++) {
      if (d.child.exitCode !== null) break;
      const r = await this.exec(g, ["curl", "-sf", "-m", "1", `http://${A.metrics}/healthz`], 3000);
      if (r.code === 0) return d;
      await sleep(100);
    }
    await d.stop(500);
    throw new Error(`tunnat in ${g} did not become healthy:\n${d.out().slice(-3000)}`);
  }

  startKeepalived(g: Gw): Proc {
    const k = this.spawn(g, [
      "keepalived",
      "--dont-fork",
      "--log-console",
      "--vrrp",
      "-f",
      join(this.tmp, `${g}-keepalived.conf`),
      "-p",
      join(this.tmp, `${g}-keepalived.pid`),
      "-r",
      join(this.tmp, `${g}-vrrp.pid`),
      "-c",
      join(this.tmp, `${g}-checkers.pid`),
    ]);
    this.keepalived[g] = k;
    return k;
  }

  /** kill -9 a gateway's daemon; resolves once it has exited. */
  async kill9(g: Gw): Promise<void> {
    const d = this.daemons[g];
    if (!d) return;
    d.child.kill("SIGKILL");
    await d.exited;
    this.daemons[g] = undefined;
  }

  /** `tunnat ha status --json` of a gateway (null when it does not answer). */
  async status(g: Gw): Promise<Record<string, unknown> | null> {
    const r = await this.exec(
      g,
      [process.execPath, BIN, "ha", "status", "--json", "--socket", this.sock(g)],
      10_000,
    );
    if (r.code !== 0) return null;
    try {
      return JSON.parse(r.stdout) as Record<string, unknown>;
    } catch {
      return null;
    }
  }

  /** Poll until `pred(status)` holds (or timeoutMs); returns the last status. */
  async waitFor(
    g: Gw,
    pred: (s: Record<string, unknown>) => boolean,
    timeoutMs = 10_000,
  ): Promise<Record<string, unknown> | null> {
    const end = Date.now() + timeoutMs;
    let s: Record<string, unknown> | null = null;
    while (Date.now() < end) {
      s = await this.status(g);
      if (s && pred(s)) return s;
      await sleep(200);
    }
    return s;
  }

  async down(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop(500).catch(() => undefined)));
    this.cleanupSync();
  }

  cleanupSync(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const p of this.procs) if (p.child.exitCode === null) p.child.kill("SIGKILL");
    for (const x of Object.values(this.ns)) {
      try {
        const pids = execFileSync("ip", ["netns", "pids", x], { encoding: "utf8" });
        for (const p of pids.split(/\s+/).filter(Boolean))
          if (Number(p) > 1 && Number(p) !== process.pid) process.kill(Number(p), "SIGKILL");
      } catch {
        // gone
      }
      try {
        ipSync(["netns", "del", x]);
      } catch {
        // gone
      }
    }
    rmSync(this.tmp, { recursive: true, force: true });
    process.off("exit", this.onExit);
  }
}
