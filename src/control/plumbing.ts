/**
 * The kernel plumbing of docs/architecture.md §Packet path, applied and removed with iproute2 (`ip`, run with execFile,
 * never a shell), like wg-quick does for WireGuard:
 *
 *   TUN:   ip addr add TUNADDR dev TUN; ip link set dev TUN mtu <outside MTU> up
 *          net.ipv4.conf.TUN.rp_filter=2
 *   table: ip route add default dev TUN table T
 *   guard: (guard.ts) ip rule add iif INSIDE_IF from CIDR lookup T priority P (each inside
 *          prefix), throw CIDR and prohibit default in table T, nft table ip tunnat_T
 *   main:  ip route add NAT/32 dev TUN                      (each NAT address)
 *   ARP:   ip neigh add proxy NAT dev OUTSIDE_IF             (each NAT address)
 *
 * Every step but the guard goes into an undo journal (also persisted to a state file with the
 * owner's pid and start time, so a crashed run's leftovers are removed at the next start). The
 * guard outlives the daemon: stop() removes the journal's items, and with the TUN gone the
 * prohibit route and the nft chain keep inside traffic from leaving untranslated (fail closed);
 * only `tunnat down` removes it, and the next start takes it over without a gap.
 *
 * check() runs every refusal (a live owner of the state file, the table or a NAT address used by a
 * running TUN, a missing interface or nft) before anything is changed, so a refused start touches
 * nothing of another daemon. A failed step undoes the journal in reverse order, puts back the
 * guard that was there before, and throws TUNNAT_ERR_PLUMBING naming the command and its stderr.
 * remove() tolerates items that are already gone. Inside and outside may be the same interface
 * (single-ENI EC2): the rule matches on iif, and translated packets come back with iif TUN, so
 * they never loop.
 *
 * Shared-address mode (shared-address.ts): when the NAT address is the outside interface's own
 * address, check() selects it (`shared`): the main-table route goes to the internal address
 * instead (ip route add INTERNAL/32 dev TUN), there is no proxy ARP, and the nft table
 * `ip tunnat_shared_T` joins the journal (undo: nft delete table).
 */
import { readFileSync, rmSync } from "node:fs";
import type { Logger } from "pino";
import { ErrorCode, TunnatError } from "../base/errors.js";
import { type Cidr, formatCidr, formatIpv4 } from "../wire/addr.js";
import { Guard, type GuardChange, type GuardSpec } from "./guard.js";
import type { JournalEntry } from "./handover.js";
import { type OwnerRecord, ownerAlive, selfRecord } from "./owner.js";
import { CommandError, hostRunner, type Runner } from "./runner.js";
import {
  parsePortRange,
  reservedRange,
  type SharedMode,
  sharedScript,
  sharedTableName,
} from "./shared-address.js";
import { writeJsonAtomic } from "./state-file.js";

/** The guard's part (interfaces, prefixes, NAT addresses, table and priority) and the rest. */
export interface PlumbingSpec extends GuardSpec {
  /** Address for the TUN; null = none. */
  tunAddress: Cidr | null;
  /** Set ip_forward=1 when it is 0 (restored by remove) instead of refusing. */
  setIpForward: boolean;
  /** Persisted undo journal for crash recovery; null = none. */
  stateFile: string | null;
  /** Where the guard records what it installed (guard.ts); null/absent = nowhere. */
  guardStateFile?: string | null;
  /** The daemon's control socket, recorded in the state file to tell owners apart. */
  controlSocket?: string;
  /** MTU for the TUN; default: the outside interface's. */
  mtu?: number;
  /** Shared-address mode: the internal address tunnat translates to (shared-address.ts). */
  internalAddress?: number;
  /** The --ports the user gave (null = the default), and where, for shared-address mode. */
  ports?: [number, number] | null;
  portsWhere?: string;
  /** Static forwards' ports (shared-address mode sends them to the TUN too). */
  forwards?: { proto: number; port: number }[];
  /** Set by the plumbing in shared-address mode, for the readiness check. */
  sharedInternal?: number;
}

/** One undo step, serialisable so the next start can replay it after a crash. */
type UndoEntry = JournalEntry;

interface StateFile extends OwnerRecord {
  undo: UndoEntry[];
}

/** stderr of an undo that means "already gone". */
const GONE =
  /No such file or directory|Cannot find device|No such process|does not exist|No such device|Cannot assign requested address/i;

/**
 * Undo entries of state files written before the guard existed that remove what is now the
 * guard's (rules, throw routes): replaying them at a restart would open a gap.
 */
function guardOwned(u: UndoEntry): boolean {
  return (
    u.kind === "ip" && (u.args[0] === "rule" || (u.args[0] === "route" && u.args[2] === "throw"))
  );
}

interface LinkInfo {
  ifname: string;
  mtu: number;
  flags?: string[];
}

interface RouteInfo {
  type?: string;
  dst?: string;
  dev?: string;
}

export class Plumbing {
  private readonly journal: UndoEntry[] = [];
  private readonly done: string[] = [];
  private readonly runner: Runner;
  private readonly log: Logger | undefined;
  readonly guard: Guard;
  /** This instance wrote the state file (only then may it remove it). */
  private wroteState = false;
  /** The outside interface's MTU, as check() found it. */
  private outsideMtu: number | undefined;
  /** Set by check() when the NAT address is the outside interface's own (shared-address mode). */
  shared: SharedMode | null = null;

  /** A handover restart: the old daemon's pid, whose state file is not a refusal. */
  private readonly predecessor: number | undefined;

  constructor(
    readonly spec: PlumbingSpec,
    opts: { runner?: Runner; log?: Logger; predecessor?: number } = {},
  ) {
    this.runner = opts.runner ?? hostRunner();
    this.log = opts.log;
    this.predecessor = opts.predecessor;
    this.guard = new Guard(
      {
        tun: spec.tun,
        insideInterface: spec.insideInterface,
        outsideInterface: spec.outsideInterface,
        inside: spec.inside,
        natAddresses: [...spec.natAddresses],
        table: spec.table,
        priority: spec.priority,
      },
      this.runner,
      spec.guardStateFile ?? null,
      opts.log,
    );
  }

  /** Commands applied so far, in order (for logs and tests). */
  get applied(): readonly string[] {
    return this.done;
  }

  /**
   * Every reason to refuse the start, checked before anything is changed, so that a refused start
   * touches nothing of another daemon: nft missing, the state file owned by a live tunnat, the
   * route table or a NAT address in use by a running TUN, an interface missing, a NAT address the
   * host owns.
   */
  async check(): Promise<void> {
    const s = this.spec;
    const r = this.runner;
    try {
      await r.nft(["--version"]);
    } catch (e) {
      throw new TunnatError(
        ErrorCode.Prereq,
        `nft (nftables) is not usable${r.where}: ${e instanceof CommandError ? e.stderr.trim() : String(e)}. tunnat's guard (docs/security.md) needs it: install nftables ("apt-get install nftables"), or run with --no-manage-routes`,
        { cause: e },
      );
    }
    this.refuseLiveOwner();
    await this.refuseTableInUse(s.tun);
    this.outsideMtu = (await this.link(s.outsideInterface, "--outside-interface")).mtu;
    await this.link(s.insideInterface, "--inside-interface");
    await this.refuseLocalNatAddresses();
    const routed = this.shared ? [this.shared.internal] : s.natAddresses;
    for (const nat of routed) {
      const a = formatIpv4(nat);
      const routes = JSON.parse(await r.ip(["-j", "route", "show", `${a}/32`])) as RouteInfo[];
      const other = routes.find((x) => x.dev !== s.tun);
      if (other)
        throw new TunnatError(
          ErrorCode.Prereq,
          `${this.shared ? "internal" : "NAT"} address ${a} is already routed${other.dev ? ` to ${other.dev}` : ""}${r.where} (another tunnat running with it?); stop that daemon or remove the route first`,
        );
    }
  }

  /** The spec the readiness check holds the kernel to (shared-address mode: its routes). */
  readinessSpec(): PlumbingSpec {
    return this.shared ? { ...this.spec, sharedInternal: this.shared.internal } : this.spec;
  }

  /**
   * Install the plumbing. `checked`: check() ran in this start just before (the daemon's
   * refusals), so its commands are not run a second time.
   */
  async apply(opts: { checked?: boolean } = {}): Promise<void> {
    const s = this.spec;
    const r = this.runner;
    if (!opts.checked) await this.check();
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
      // Checked just before: the interfaces were there and the TUN was just opened.
      let mtu = opts.checked ? this.outsideMtu : undefined;
      if (mtu === undefined) {
        mtu = (await this.link(s.outsideInterface, "--outside-interface")).mtu;
        await this.link(s.insideInterface, "--inside-interface");
        await this.link(s.tun, "--tun");
      }

      if (s.tunAddress) {
        const a = formatCidr(s.tunAddress);
        await this.step(["addr", "add", a, "dev", s.tun], ["addr", "del", a, "dev", s.tun]);
      }
      await this.step(["link", "set", "dev", s.tun, "mtu", String(s.mtu ?? mtu)], null);
      await this.disableIpv6(s.tun);
      await this.step(["link", "set", "dev", s.tun, "up"], ["link", "set", "dev", s.tun, "down"]);
      // Translated replies arrive on the TUN from internet sources whose reverse route points at
      // the outside interface; strict reverse-path filtering (fib_validate_source) would drop them.
      // The effective value is max(all, dev), so loose (2) on the TUN is enough and `all` is left
      // alone.
      const rpKey = `net/ipv4/conf/${s.tun}/rp_filter`;
      await this.sysctl(rpKey, "2", await r.readSysctl(rpKey));

      const table = String(s.table);
      await this.step(
        ["route", "add", "default", "dev", s.tun, "table", table],
        ["route", "del", "default", "dev", s.tun, "table", table],
      );
      // The guard (rules, throw and prohibit routes, nft table) is not in the journal: it stays
      // when the daemon stops and is removed by `tunnat down` only. It goes in before anything
      // routes to the NAT addresses, so whoever sees those routes also sees the rules.
      this.done.push(...(await this.guard.install()));
      if (this.shared) {
        // The kernel's half of shared-address mode: the nft table, then the route that makes
        // the internal address reachable (shared-address.ts).
        const name = sharedTableName(s.table);
        const body = sharedScript(this.shared, s.table, s.forwards ?? []);
        await r.nft(["-f", "-"], `table ip ${name} {}\ndelete table ip ${name}\n${body}`);
        this.done.push(`nft table ip ${name}`);
        this.journal.push({ kind: "nft", args: ["delete", "table", "ip", name] });
        this.writeState();
        const dst = `${formatIpv4(this.shared.internal)}/32`;
        await this.step(["route", "add", dst, "dev", s.tun], ["route", "del", dst, "dev", s.tun]);
      }
      for (const nat of this.shared ? [] : s.natAddresses) {
        const dst = `${formatIpv4(nat)}/32`;
        await this.step(["route", "add", dst, "dev", s.tun], ["route", "del", dst, "dev", s.tun]);
      }
      for (const nat of this.shared ? [] : s.natAddresses) {
        const a = formatIpv4(nat);
        await this.step(
          ["neigh", "add", "proxy", a, "dev", s.outsideInterface],
          ["neigh", "del", "proxy", a, "dev", s.outsideInterface],
        );
      }
    } catch (e) {
      const warnings = await this.abort();
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

  /**
   * Stop: undo the journal in reverse order (proxy ARP, routes via the TUN, sysctls, the TUN's
   * address); items already gone are fine. The guard stays. Returns other failures.
   */
  async remove(): Promise<string[]> {
    const warnings = await this.replay(this.journal.splice(0).reverse());
    this.done.length = 0;
    this.writeState();
    return warnings;
  }

  /** The undo journal, for a handover restart's successor (handover.ts). */
  journalEntries(): JournalEntry[] {
    return this.journal.map((u) => structuredClone(u));
  }

  /**
   * A handover restart: take over the old daemon's plumbing as it is (its journal becomes ours,
   * and the state file names this process); the routes, rules and proxy ARP stay. The guard
   * is taken over as at every start (guard.install(): the nft table replaced atomically).
   */
  async adopt(journal: JournalEntry[]): Promise<void> {
    this.journal.push(...journal.filter((u) => !guardOwned(u)));
    this.done.push(`adopted ${this.journal.length} plumbing items`);
    this.wroteState = true;
    this.writeState();
    this.done.push(...(await this.guard.install()));
  }

  /** A start that failed: undo the journal and put back the guard that was there before. */
  async abort(): Promise<string[]> {
    const warnings = await this.remove();
    warnings.push(...(await this.guard.restore()));
    return warnings;
  }

  /**
   * `tunnat down`: refuse while a daemon of this configuration runs; else remove a stopped or
   * crashed run's plumbing (its state file) and the guard. Idempotent.
   */
  async down(): Promise<GuardChange> {
    this.refuseLiveOwner();
    await this.refuseTableInUse(null);
    const done: string[] = [];
    const stale = await this.removeStale();
    if (stale.removed > 0)
      done.push(`the plumbing of a stopped run (pid ${stale.pid}): ${stale.removed} items`);
    const g = await this.guard.removeAll();
    done.push(...g.done);
    return { done, warnings: [...stale.warnings, ...g.warnings] };
  }

  /** The state file's owner is a live tunnat (not this process): refuse. */
  private refuseLiveOwner(): void {
    const file = this.spec.stateFile;
    if (!file) return;
    const state = readState(file);
    if (state && state.pid !== process.pid && state.pid !== this.predecessor && ownerAlive(state))
      throw new TunnatError(
        ErrorCode.Prereq,
        `another tunnat (pid ${state.pid}${state.tun ? `, --tun ${state.tun}` : ""}) owns the plumbing recorded in ${file}; stop it first or choose another --control-socket`,
      );
  }

  /**
   * A running daemon's TUN carries the default route of its table (it vanishes with the TUN): any
   * route of table T through a device other than `ours` means another daemon uses the table.
   */
  private async refuseTableInUse(ours: string | null): Promise<void> {
    const s = this.spec;
    const out = await this.runner
      .ip(["-j", "route", "show", "table", String(s.table)])
      .catch(() => "[]");
    const busy = (JSON.parse(out) as RouteInfo[]).find(
      (x) => (x.type === undefined || x.type === "unicast") && x.dev && x.dev !== ours,
    );
    if (busy)
      throw new TunnatError(
        ErrorCode.Prereq,
        `route table ${s.table} is in use${this.runner.where}: "${busy.dst ?? "?"} dev ${busy.dev}" (another tunnat running with --route-table ${s.table}?); stop it first or choose another --route-table`,
      );
  }

  /**
   * Leftovers of a run that is gone (SIGKILL, crash): replay the undo journal its state file
   * lists, then remove the file. The guard is not touched here (install() takes it over).
   */
  async removeStale(): Promise<{ warnings: string[]; removed: number; pid: number }> {
    const file = this.spec.stateFile;
    const none = { warnings: [], removed: 0, pid: 0 };
    if (!file) return none;
    const state = readState(file);
    if (!state) {
      rmSync(file, { force: true });
      return none;
    }
    if (state.pid !== process.pid && ownerAlive(state)) return none;
    const undo = Array.isArray(state.undo) ? state.undo.filter((u) => !guardOwned(u)) : [];
    this.log?.warn({ stateFile: file, pid: state.pid }, "removing a stopped run's plumbing");
    const warnings = await this.replay([...undo].reverse());
    rmSync(file, { force: true });
    return { warnings, removed: undo.length, pid: state.pid };
  }

  private async replay(entries: UndoEntry[]): Promise<string[]> {
    const warnings: string[] = [];
    for (const u of entries) {
      try {
        if (u.kind === "ip") await this.runner.ip(u.args);
        else if (u.kind === "nft") await this.runner.nft(u.args);
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

  /**
   * Dedicated-address mode: the host must not own the NAT address (docs/architecture.md §Packet path). The one
   * exception selects shared-address mode: a single NAT address that is the outside interface's
   * own; then the reserved port range is worked out against the host's ephemeral range.
   */
  private async refuseLocalNatAddresses(): Promise<void> {
    const s = this.spec;
    const out = await this.runner.ip(["-j", "-4", "addr", "show"]);
    const local = new Map<string, string>();
    for (const l of JSON.parse(out) as { ifname?: string; addr_info?: { local?: string }[] }[])
      for (const a of l.addr_info ?? []) if (a.local) local.set(a.local, l.ifname ?? "");
    this.shared = null;
    for (const nat of s.natAddresses) {
      const a = formatIpv4(nat);
      const dev = local.get(a);
      if (dev === undefined) continue;
      if (dev !== s.outsideInterface || s.natAddresses.length > 1)
        throw new TunnatError(
          ErrorCode.Prereq,
          `NAT address ${a} is an address of this host${this.runner.where} (on ${dev}); tunnat needs a dedicated address the host does not own (e.g. an ENI secondary private IP), or, for shared-address mode, exactly one --nat-address that is the address of --outside-interface ${s.outsideInterface}`,
        );
      const internal = s.internalAddress;
      if (internal === undefined || local.has(formatIpv4(internal)))
        throw new TunnatError(
          ErrorCode.Config,
          `shared-address mode needs an --internal-address the host does not own${internal === undefined ? "" : ` (${formatIpv4(internal)} is an address of this host)`}`,
        );
      const eph = parsePortRange(await this.runner.readSysctl("net/ipv4/ip_local_port_range"));
      if (!eph)
        throw new TunnatError(
          ErrorCode.Prereq,
          `cannot read net.ipv4.ip_local_port_range${this.runner.where}; shared-address mode needs it to keep clear of the host's ephemeral ports`,
        );
      const [portLo, portHi] = reservedRange(eph, s.ports ?? null, s.portsWhere ?? "--ports");
      this.shared = { shared: nat, internal, portLo, portHi };
      if (!this.guard.spec.natAddresses.includes(internal))
        this.guard.spec.natAddresses.push(internal);
    }
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
      // Only our own file: a refused or failed start must not remove another daemon's.
      if (this.wroteState) rmSync(file, { force: true });
      this.wroteState = false;
      return;
    }
    const state: StateFile = {
      ...selfRecord(this.spec.tun, this.spec.controlSocket),
      undo: this.journal,
    };
    writeJsonAtomic(file, state);
    this.wroteState = true;
  }
}

function readState(file: string): StateFile | null {
  try {
    const s = JSON.parse(readFileSync(file, "utf8")) as StateFile;
    return s && typeof s === "object" && typeof s.pid === "number" ? s : null;
  } catch {
    return null;
  }
}
