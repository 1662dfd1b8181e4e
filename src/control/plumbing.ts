/**
 * The kernel plumbing of DESIGN.md §1, applied and removed with iproute2 (`ip`, run with execFile,
 * never a shell), like wg-quick does for WireGuard:
 *
 *   TUN:   ip addr add TUNADDR dev TUN; ip link set dev TUN mtu <outside MTU> up
 *          net.ipv4.conf.TUN.rp_filter=2
 *   main:  ip route add NAT/32 dev TUN                      (each NAT address)
 *   table: ip route add default dev TUN table T
 *          ip route add throw CIDR table T                  (each inside prefix: intra-VPC stays in main)
 *   rules: ip rule add iif INSIDE_IF from CIDR lookup T priority P   (each inside prefix)
 *   ARP:   ip neigh add proxy NAT dev OUTSIDE_IF             (each NAT address)
 *
 * Every step goes into an undo journal (also persisted to a state file, so a crashed run's
 * leftovers are removed at the next start). A failed step undoes the journal in reverse order and
 * throws TUNNAT_ERR_PLUMBING naming the command and its stderr. remove() tolerates items that are
 * already gone. Inside and outside may be the same interface (single-ENI EC2): the rule matches
 * on iif, and translated packets come back with iif TUN, so they never loop.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { type Cidr, formatCidr, formatIpv4 } from "../wire/addr.js";
import { ErrorCode, TunnatError } from "./errors.js";

/** A failed external command. */
export class CommandError extends Error {
  constructor(
    readonly argv: string[],
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(`"${argv.join(" ")}" failed: ${stderr.trim() || `exit code ${exitCode}`}`);
    this.name = "CommandError";
  }
}

/** How commands reach the kernel: the host's namespace, or a named one (tests, the lab). */
export interface Runner {
  /** Run `ip ARGS`; resolves with stdout, rejects with CommandError. */
  ip(args: string[]): Promise<string>;
  /** Read a sysctl by slash path ("net/ipv4/ip_forward"); slashes keep dotted ifnames intact. */
  readSysctl(key: string): Promise<string>;
  writeSysctl(key: string, value: string): Promise<void>;
  /** Shown in messages: "" for the host, " (netns X)" otherwise. */
  readonly where: string;
}

export function execCommand(file: string, args: string[], timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, encoding: "utf8" }, (err, stdout, stderr) => {
      if (err) {
        const code = typeof err.code === "number" ? err.code : null;
        // A command killed by a signal has no stderr: say which signal (e.g. a service manager
        // that signals the whole group).
        const why = err.signal ? `killed by ${err.signal}` : err.message;
        reject(new CommandError([file, ...args], stderr || why, code));
      } else resolve(stdout);
    });
  });
}

export function hostRunner(): Runner {
  return {
    where: "",
    ip: (args) => execCommand("ip", args),
    readSysctl: async (key) => (await readFile(`/proc/sys/${key}`, "utf8")).trim(),
    writeSysctl: (key, value) => writeFile(`/proc/sys/${key}`, value),
  };
}

/** Commands inside network namespace `ns` (ip -n NS; sysctl through ip netns exec). */
export function netnsRunner(ns: string): Runner {
  return {
    where: ` (netns ${ns})`,
    ip: (args) => execCommand("ip", ["-n", ns, ...args]),
    readSysctl: async (key) =>
      (await execCommand("ip", ["netns", "exec", ns, "sysctl", "-n", key])).trim(),
    writeSysctl: async (key, value) => {
      await execCommand("ip", ["netns", "exec", ns, "sysctl", "-q", "-w", `${key}=${value}`]);
    },
  };
}

export interface PlumbingSpec {
  tun: string;
  /** Address for the TUN; null = none. */
  tunAddress: Cidr | null;
  insideInterface: string;
  outsideInterface: string;
  inside: Cidr[];
  natAddresses: number[];
  table: number;
  priority: number;
  /** Set ip_forward=1 when it is 0 (restored by remove) instead of refusing. */
  setIpForward: boolean;
  /** Persisted undo journal for crash recovery; null = none. */
  stateFile: string | null;
  /** MTU for the TUN; default: the outside interface's. */
  mtu?: number;
}

/** One undo step, serialisable so the next start can replay it after a crash. */
type UndoEntry = { kind: "ip"; args: string[] } | { kind: "sysctl"; key: string; value: string };

interface StateFile {
  pid: number;
  tun: string;
  undo: UndoEntry[];
}

/** stderr of an undo that means "already gone". */
const GONE =
  /No such file or directory|Cannot find device|No such process|does not exist|No such device|Cannot assign requested address/i;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

interface LinkInfo {
  ifname: string;
  mtu: number;
  flags?: string[];
}

export class Plumbing {
  private readonly journal: UndoEntry[] = [];
  private readonly done: string[] = [];
  private readonly runner: Runner;
  private readonly log: Logger | undefined;

  constructor(
    readonly spec: PlumbingSpec,
    opts: { runner?: Runner; log?: Logger } = {},
  ) {
    this.runner = opts.runner ?? hostRunner();
    this.log = opts.log;
  }

  /** Commands applied so far, in order (for logs and tests). */
  get applied(): readonly string[] {
    return this.done;
  }

  async apply(): Promise<void> {
    const s = this.spec;
    const r = this.runner;
    await this.removeStale();
    try {
      // ip_forward: without it the kernel drops what arrives on the inside interface.
      const fwd = await r.readSysctl("net/ipv4/ip_forward");
      if (fwd !== "1") {
        if (!s.setIpForward)
          throw new TunnatError(
            ErrorCode.Prereq,
            `net.ipv4.ip_forward is ${fwd}${r.where}: the kernel would not forward inside traffic into ${s.tun}. Run "sysctl -w net.ipv4.ip_forward=1" (persist it in /etc/sysctl.d/), or start tunnat with --set-ip-forward`,
          );
        await this.sysctl("net/ipv4/ip_forward", "1", fwd);
      }
      const out = await this.link(s.outsideInterface, "--outside-interface");
      await this.link(s.insideInterface, "--inside-interface");
      await this.link(s.tun, "--tun");
      await this.refuseLocalNatAddresses();

      if (s.tunAddress) {
        const a = formatCidr(s.tunAddress);
        await this.step(["addr", "add", a, "dev", s.tun], ["addr", "del", a, "dev", s.tun]);
      }
      await this.step(["link", "set", "dev", s.tun, "mtu", String(s.mtu ?? out.mtu)], null);
      await this.disableIpv6(s.tun);
      await this.step(["link", "set", "dev", s.tun, "up"], ["link", "set", "dev", s.tun, "down"]);
      // Translated replies arrive on the TUN from internet sources whose reverse route points at
      // the outside interface; strict reverse-path filtering (fib_validate_source) would drop them.
      // The effective value is max(all, dev), so loose (2) on the TUN is enough and `all` is left
      // alone.
      const rpKey = `net/ipv4/conf/${s.tun}/rp_filter`;
      await this.sysctl(rpKey, "2", await r.readSysctl(rpKey));

      for (const nat of s.natAddresses) {
        const dst = `${formatIpv4(nat)}/32`;
        await this.step(["route", "add", dst, "dev", s.tun], ["route", "del", dst, "dev", s.tun]);
      }
      const table = String(s.table);
      await this.step(
        ["route", "add", "default", "dev", s.tun, "table", table],
        ["route", "del", "default", "dev", s.tun, "table", table],
      );
      for (const p of s.inside) {
        const c = formatCidr(p);
        await this.step(
          ["route", "add", "throw", c, "table", table],
          ["route", "del", "throw", c, "table", table],
        );
      }
      const prio = String(s.priority);
      for (const p of s.inside) {
        const c = formatCidr(p);
        const rule = ["iif", s.insideInterface, "from", c, "lookup", table, "priority", prio];
        await this.step(["rule", "add", ...rule], ["rule", "del", ...rule]);
      }
      for (const nat of s.natAddresses) {
        const a = formatIpv4(nat);
        await this.step(
          ["neigh", "add", "proxy", a, "dev", s.outsideInterface],
          ["neigh", "del", "proxy", a, "dev", s.outsideInterface],
        );
      }
    } catch (e) {
      const warnings = await this.remove();
      if (e instanceof TunnatError) throw e;
      if (e instanceof CommandError)
        throw new TunnatError(
          ErrorCode.Plumbing,
          `kernel plumbing failed${r.where}: ${e.message}. Everything applied so far was undone${warnings.length ? ` (undo warnings: ${warnings.join("; ")})` : ""}`,
          { cause: e },
        );
      throw new TunnatError(ErrorCode.Plumbing, `kernel plumbing failed${r.where}: ${String(e)}`, {
        cause: e,
      });
    }
  }

  /** Undo everything in reverse order; items already gone are fine. Returns other failures. */
  async remove(): Promise<string[]> {
    const warnings = await this.replay(this.journal.splice(0).reverse());
    this.done.length = 0;
    this.writeState();
    return warnings;
  }

  /**
   * Leftovers of a crashed run: our rule priority + table (nobody else should use that pair) and
   * whatever the dead run's state file lists. A state file of a live process is refused.
   */
  async removeStale(): Promise<string[]> {
    const s = this.spec;
    const warnings: string[] = [];
    if (s.stateFile) {
      let state: StateFile | null = null;
      try {
        state = JSON.parse(readFileSync(s.stateFile, "utf8")) as StateFile;
      } catch {
        state = null;
      }
      if (state && state.pid !== process.pid && pidAlive(state.pid))
        throw new TunnatError(
          ErrorCode.Prereq,
          `another tunnat (pid ${state.pid}) owns the plumbing recorded in ${s.stateFile}; stop it first or choose another --tun/--control-socket`,
        );
      if (state && Array.isArray(state.undo)) {
        this.log?.warn(
          { stateFile: s.stateFile, pid: state.pid },
          "removing a crashed run's plumbing",
        );
        warnings.push(...(await this.replay([...state.undo].reverse())));
      }
    }
    const table = String(s.table);
    const prio = String(s.priority);
    const rules = await this.runner.ip(["-j", "rule", "show"]).catch(() => "[]");
    let ours = 0;
    try {
      for (const rule of JSON.parse(rules) as { priority?: number; table?: string }[])
        if (rule.priority === s.priority && String(rule.table) === table) ours++;
    } catch {
      ours = 0;
    }
    for (let i = 0; i < ours; i++)
      await this.runner
        .ip(["rule", "del", "priority", prio, "table", table])
        .catch((e: unknown) => warnings.push(String(e)));
    if (ours > 0) this.log?.warn({ rules: ours, table: s.table }, "removed stale rules");
    await this.runner.ip(["route", "flush", "table", table]).catch(() => undefined);
    if (s.stateFile) rmSync(s.stateFile, { force: true });
    return warnings;
  }

  private async replay(entries: UndoEntry[]): Promise<string[]> {
    const warnings: string[] = [];
    for (const u of entries) {
      try {
        if (u.kind === "ip") await this.runner.ip(u.args);
        else await this.runner.writeSysctl(u.key, u.value);
      } catch (e) {
        const msg = e instanceof CommandError ? e.stderr : String(e);
        if (!GONE.test(msg)) warnings.push(e instanceof Error ? e.message : msg);
      }
    }
    return warnings;
  }

  private async link(name: string, flag: string): Promise<LinkInfo> {
    let out: string;
    try {
      out = await this.runner.ip(["-j", "link", "show", "dev", name]);
    } catch (e) {
      throw new TunnatError(
        ErrorCode.Plumbing,
        `interface ${name} (${flag}) not found${this.runner.where}: ${e instanceof CommandError ? e.stderr.trim() : String(e)}. Check the name with "ip link"`,
        { cause: e },
      );
    }
    const info = (JSON.parse(out) as LinkInfo[])[0];
    if (!info) throw new TunnatError(ErrorCode.Plumbing, `interface ${name} (${flag}) not found`);
    return info;
  }

  /** Dedicated-address mode: the host must not own the NAT address (DESIGN.md §1). */
  private async refuseLocalNatAddresses(): Promise<void> {
    const out = await this.runner.ip(["-j", "-4", "addr", "show"]);
    const local = new Set<string>();
    for (const l of JSON.parse(out) as { addr_info?: { local?: string }[] }[])
      for (const a of l.addr_info ?? []) if (a.local) local.add(a.local);
    for (const nat of this.spec.natAddresses)
      if (local.has(formatIpv4(nat)))
        throw new TunnatError(
          ErrorCode.Prereq,
          `NAT address ${formatIpv4(nat)} is an address of this host${this.runner.where}; tunnat needs a dedicated address the host does not own (e.g. an ENI secondary private IP). Shared-address mode is not available yet`,
        );
  }

  private async step(args: string[], undo: string[] | null): Promise<void> {
    await this.runner.ip(args);
    this.done.push(`ip ${args.join(" ")}`);
    if (undo) {
      this.journal.push({ kind: "ip", args: undo });
      this.writeState();
    }
  }

  /**
   * The TUN carries IPv4 only. Left alone, the kernel gives it an IPv6 link-local address and
   * sends router solicitations into it, which tunnat would have to drop and count. Best effort:
   * without IPv6 in the kernel, or with /proc/sys read-only (systemd ProtectKernelTunables), the
   * TUN keeps IPv6 and the translator counts those packets as not_nat_traffic.
   */
  private async disableIpv6(tun: string): Promise<void> {
    const key = `net/ipv6/conf/${tun}/disable_ipv6`;
    try {
      await this.sysctl(key, "1", await this.runner.readSysctl(key));
    } catch {
      // Not fatal: see above.
    }
  }

  private async sysctl(key: string, value: string, old: string): Promise<void> {
    if (old === value) return;
    await this.runner.writeSysctl(key, value);
    this.done.push(`sysctl ${key}=${value}`);
    this.journal.push({ kind: "sysctl", key, value: old });
    this.writeState();
  }

  private writeState(): void {
    const file = this.spec.stateFile;
    if (!file) return;
    if (this.journal.length === 0) {
      rmSync(file, { force: true });
      return;
    }
    const state: StateFile = { pid: process.pid, tun: this.spec.tun, undo: this.journal };
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
    renameSync(tmp, file);
  }
}
