/**
 * The guard: what keeps the gateway one-way and closed when tunnat is not translating. It is
 * installed by the plumbing (plumbing.ts) with --manage-routes, outlives the daemon (SIGTERM,
 * SIGKILL, a crash, a restart) and is removed only by `tunnat down`:
 *
 *   rules:  ip rule add iif INSIDE_IF from CIDR lookup T priority P   (each inside prefix)
 *   table:  ip route replace throw CIDR table T                       (intra-inside stays in main)
 *           ip route replace prohibit default table T metric 4294967295
 *   nft:    table ip tunnat_T, one forward-hook chain (guardScript below)
 *
 * The daemon adds `default dev TUN table T` (metric 0) while it runs; when the TUN goes away the
 * kernel deletes that route with it and the prohibit default answers inside traffic with ICMP 3/13
 * instead of letting the lookup fall through to the main table (fail closed). The forward chain:
 *
 *   iifname TUN accept                              translated by tunnat (also the hairpin path)
 *   iifname OUT ip saddr @inside drop               spoofed_source (two interfaces): an inside
 *   iifname OUT ip saddr @nat drop                  or NAT source from outside is forged; to the
 *                                                   NAT address it would pass for hairpinning
 *   iifname IN ip saddr @nat drop                   spoofed_source: a NAT address from inside
 *   iifname IN ip saddr != @inside drop             spoofed_source (two interfaces)
 *   iifname IN ip saddr != @inside ip daddr != @inside oifname != TUN drop
 *                                                   spoofed_source (single ENI: replies from the
 *                                                   internet also arrive on IN, on their way to
 *                                                   the NAT address in the TUN)
 *   iifname IN ip saddr @inside ip daddr @inside accept
 *                                                   inside to inside through the gateway (the
 *                                                   throw routes exist for it: VPC subnets,
 *                                                   several inside prefixes); it never crosses
 *                                                   the outside link
 *   ip daddr @inside drop                           routed_inbound: anything else to an inside
 *                                                   host that did not come back through the TUN
 *   iifname IN ip saddr @inside oifname != TUN drop no_tun: inside traffic that would leave
 *                                                   untranslated (the TUN is gone)
 *
 * Each drop counts into a named counter per reason (GUARD_REASONS), read off the data path with
 * `nft -j list counters`. The table is replaced in one `nft -f -` transaction (add, delete, add),
 * so a restart never has a moment without it; routes use `replace`; rules already present are
 * kept. Every change is recorded in the guard state file next to the control socket.
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Logger } from "pino";
import { ErrorCode, TunnatError } from "../base/errors.js";
import { type Cidr, formatCidr, formatIpv4 } from "../wire/addr.js";
import { type OwnerRecord, selfRecord } from "./owner.js";
import { CommandError, type Runner } from "./runner.js";
import { writeJsonAtomic } from "./state-file.js";

/** The guard's drop reasons: counter names in the nft table and metric labels. */
export const GUARD_REASONS = [
  {
    name: "routed_inbound",
    help: "forwarded to an inside prefix without coming back through the TUN (e.g. a neighbour that routes the private prefix via this host)",
  },
  {
    name: "spoofed_source",
    help: "a source it cannot have: on the inside interface a NAT address or a source outside the inside prefixes; on the outside interface (two interfaces) an inside or NAT address",
  },
  {
    name: "no_tun",
    help: "inside traffic that would have left untranslated, not through the TUN (no daemon: fail closed)",
  },
] as const;
export type GuardReason = (typeof GUARD_REASONS)[number]["name"];

/** Metric of the prohibit default: below every other route in the table. */
export const PROHIBIT_METRIC = 4294967295;

export interface GuardSpec {
  tun: string;
  insideInterface: string;
  outsideInterface: string;
  inside: Cidr[];
  natAddresses: number[];
  table: number;
  priority: number;
}

export function guardTableName(table: number): string {
  return `tunnat_${table}`;
}

/** A policy rule of the guard (priority P, table T). `from` is a CIDR or "all". */
export interface RuleItem {
  iif: string | null;
  from: string;
}

/** A route of the guard in table T: throw, prohibit (or unreachable, blackhole). */
export interface RouteItem {
  type: string;
  dst: string;
  metric: number | null;
}

/** A whole guard: the nft table's text (null = none), its rules and its routes. */
export interface GuardState {
  nft: string | null;
  rules: RuleItem[];
  routes: RouteItem[];
}

const GUARD_ROUTE_TYPES = new Set(["throw", "prohibit", "unreachable", "blackhole"]);

function quoteIf(name: string): string {
  if (!/^[^"\\\s/:]{1,15}$/.test(name))
    throw new TunnatError(ErrorCode.Config, `interface name ${JSON.stringify(name)} is not valid`);
  return `"${name}"`;
}

/** The nft table of the guard (without the replace preamble; see replaceScript). */
export function guardScript(spec: GuardSpec): string {
  const name = guardTableName(spec.table);
  const tun = quoteIf(spec.tun);
  const inIf = quoteIf(spec.insideInterface);
  const outIf = quoteIf(spec.outsideInterface);
  const single = spec.insideInterface === spec.outsideInterface;
  const inside = spec.inside.map(formatCidr).join(", ");
  const nat = spec.natAddresses.map(formatIpv4).join(", ");
  const drop = (reason: GuardReason) => `counter name "${reason}" drop`;
  const lines = [
    `table ip ${name} {`,
    "  set inside {",
    "    type ipv4_addr",
    "    flags interval",
    "    auto-merge",
    `    elements = { ${inside} }`,
    "  }",
    "  set nat {",
    "    type ipv4_addr",
    `    elements = { ${nat} }`,
    "  }",
    ...GUARD_REASONS.map((r) => `  counter ${r.name} {\n  }`),
    "  chain forward {",
    "    type filter hook forward priority filter; policy accept;",
    `    iifname ${tun} accept`,
    // With one interface an inside source on it is a real inside host: nothing to tell apart.
    ...(single
      ? []
      : [
          `    iifname ${outIf} ip saddr @inside ${drop("spoofed_source")}`,
          `    iifname ${outIf} ip saddr @nat ${drop("spoofed_source")}`,
        ]),
    `    iifname ${inIf} ip saddr @nat ${drop("spoofed_source")}`,
    single
      ? `    iifname ${inIf} ip saddr != @inside ip daddr != @inside oifname != ${tun} ${drop("spoofed_source")}`
      : `    iifname ${inIf} ip saddr != @inside ${drop("spoofed_source")}`,
    `    iifname ${inIf} ip saddr @inside ip daddr @inside accept`,
    `    ip daddr @inside ${drop("routed_inbound")}`,
    `    iifname ${inIf} ip saddr @inside oifname != ${tun} ${drop("no_tun")}`,
    "  }",
    "}",
  ];
  return `${lines.join("\n")}\n`;
}

/** One nft transaction that creates or replaces table `name` with `body` (atomic). */
export function replaceScript(name: string, body: string): string {
  return `table ip ${name} {}\ndelete table ip ${name}\n${body}`;
}

/** What the guard of `spec` consists of. */
export function desiredGuard(spec: GuardSpec): GuardState {
  return {
    nft: guardScript(spec),
    rules: spec.inside.map((p) => ({ iif: spec.insideInterface, from: formatCidr(p) })),
    routes: [
      ...spec.inside.map((p) => ({ type: "throw", dst: formatCidr(p), metric: null })),
      { type: "prohibit", dst: "default", metric: PROHIBIT_METRIC },
    ],
  };
}

const ruleKey = (r: RuleItem) => `${r.iif ?? "*"} ${r.from}`;
const routeKey = (r: RouteItem) => `${r.type} ${r.dst} ${r.metric ?? 0}`;

export function ruleArgs(op: "add" | "del", r: RuleItem, table: number, prio: number): string[] {
  const iif = r.iif === null ? [] : ["iif", r.iif];
  return ["rule", op, ...iif, "from", r.from, "lookup", String(table), "priority", String(prio)];
}

export function routeArgs(op: "replace" | "del", r: RouteItem, table: number): string[] {
  const metric = r.metric === null ? [] : ["metric", String(r.metric)];
  return ["route", op, r.type, r.dst, "table", String(table), ...metric];
}

/** The guard's rules in `ip -j rule show` output (priority P, table T). */
export function parseRules(json: string, table: number, prio: number): RuleItem[] {
  const out: RuleItem[] = [];
  for (const r of JSON.parse(json) as {
    priority?: number;
    table?: string | number;
    iif?: string;
    src?: string;
    srclen?: number;
  }[]) {
    if (r.priority !== prio || String(r.table) !== String(table)) continue;
    const from = !r.src || r.src === "all" ? "all" : `${r.src}/${r.srclen ?? 32}`;
    out.push({ iif: r.iif ?? null, from });
  }
  return out;
}

/** The guard's routes in `ip -j route show table T` output (not the daemon's unicast ones). */
export function parseRoutes(json: string): RouteItem[] {
  const out: RouteItem[] = [];
  for (const r of JSON.parse(json) as { type?: string; dst?: string; metric?: number }[])
    if (r.type && GUARD_ROUTE_TYPES.has(r.type) && r.dst)
      out.push({ type: r.type, dst: r.dst, metric: r.metric ? r.metric : null });
  return out;
}

/** Packets and bytes per reason from `nft -j list counters table ip NAME`. */
export function parseCounters(
  json: string,
): Record<GuardReason, { packets: number; bytes: number }> {
  const out = Object.fromEntries(
    GUARD_REASONS.map((r) => [r.name, { packets: 0, bytes: 0 }]),
  ) as Record<GuardReason, { packets: number; bytes: number }>;
  const doc = JSON.parse(json) as {
    nftables?: { counter?: { name?: string; packets?: number; bytes?: number } }[];
  };
  for (const o of doc.nftables ?? []) {
    const c = o.counter;
    if (!c?.name || !(c.name in out)) continue;
    out[c.name as GuardReason] = { packets: c.packets ?? 0, bytes: c.bytes ?? 0 };
  }
  return out;
}

/** stderr that means "not there". */
const ABSENT =
  /No such file or directory|does not exist|Cannot find device|No such process|not found/i;

/** What the guard state file holds. */
interface GuardFile {
  owner: OwnerRecord;
  table: number;
  priority: number;
  nftTable: string;
  rules: RuleItem[];
  routes: RouteItem[];
}

export interface GuardChange {
  /** What was changed, one line each (shown by `tunnat down`). */
  done: string[];
  /** Removals that failed for another reason than "already gone". */
  warnings: string[];
}

export class Guard {
  /** The kernel's guard before install(), for restore() after a failed start. */
  private previous: GuardState | null = null;
  /** The state file's text before install() (null = there was none). */
  private previousFile: string | null = null;
  private installed = false;

  constructor(
    readonly spec: GuardSpec,
    private readonly runner: Runner,
    private readonly stateFile: string | null,
    private readonly log?: Logger,
  ) {}

  get nftTable(): string {
    return guardTableName(this.spec.table);
  }

  /** The guard as the kernel has it now, for table T and priority P (default: the spec's). */
  async snapshot(table = this.spec.table, prio = this.spec.priority): Promise<GuardState> {
    const r = this.runner;
    const name = guardTableName(table);
    const nft = await r.nft(["list", "table", "ip", name]).catch((e: unknown) => {
      if (e instanceof CommandError && ABSENT.test(e.stderr)) return null;
      throw e;
    });
    const rules = parseRules(await r.ip(["-j", "rule", "show"]), table, prio);
    const routes = await r
      .ip(["-j", "route", "show", "table", String(table)])
      .then(parseRoutes, (e: unknown) => {
        // An empty table does not exist at all for the kernel.
        if (e instanceof CommandError && ABSENT.test(e.stderr)) return [];
        throw e;
      });
    return { nft: nft === null || nft.trim() === "" ? null : nft, rules, routes };
  }

  /**
   * Make the kernel's guard the one of the spec, taking over whatever guard is there without a
   * gap (the nft table is replaced atomically, routes replaced, present rules kept); then drop
   * the rules and routes of an older configuration. Throws CommandError; restore() undoes it.
   */
  async install(): Promise<string[]> {
    this.previous = await this.snapshot();
    this.previousFile = this.readFile();
    this.installed = true;
    const change = await this.converge(this.previous, desiredGuard(this.spec), this.spec);
    this.writeFile();
    if (this.previous.nft !== null || this.previous.rules.length > 0)
      this.log?.info({ nftTable: this.nftTable }, "took over the guard left by a previous run");
    return change.done;
  }

  /** After a failed start: put back the guard that was there before install(), or none. */
  async restore(): Promise<string[]> {
    if (!this.installed || !this.previous) return [];
    this.installed = false;
    const now = await this.snapshot().catch(() => desiredGuard(this.spec));
    const change = await this.converge(now, this.previous, this.spec, true);
    const file = this.stateFile;
    if (file) {
      if (this.previousFile === null) rmSync(file, { force: true });
      else writeFileSync(file, this.previousFile, { mode: 0o600 });
    }
    return change.warnings;
  }

  /**
   * `tunnat down`: remove the guard of table T / priority P, and of the table and priority the
   * guard state file recorded if they differ (a changed configuration).
   */
  async removeAll(): Promise<GuardChange> {
    const done: string[] = [];
    const warnings: string[] = [];
    const targets: [number, number][] = [[this.spec.table, this.spec.priority]];
    const recorded = this.readFile();
    if (recorded) {
      try {
        const f = JSON.parse(recorded) as GuardFile;
        if (
          Number.isInteger(f.table) &&
          Number.isInteger(f.priority) &&
          (f.table !== this.spec.table || f.priority !== this.spec.priority)
        )
          targets.push([f.table, f.priority]);
      } catch {
        // unreadable: the configuration's own table and priority are still removed
      }
    }
    for (const [table, prio] of targets) {
      const now = await this.snapshot(table, prio);
      const c = await this.converge(
        now,
        { nft: null, rules: [], routes: [] },
        { ...this.spec, table, priority: prio },
        true,
      );
      done.push(...c.done);
      warnings.push(...c.warnings);
    }
    if (this.stateFile) rmSync(this.stateFile, { force: true });
    return { done, warnings };
  }

  /** Packets and bytes dropped per reason, or null when the table is not there. */
  async counters(): Promise<Record<GuardReason, { packets: number; bytes: number }> | null> {
    const out = await this.runner
      .nft(["-j", "list", "counters", "table", "ip", this.nftTable])
      .catch(() => null);
    if (out === null) return null;
    try {
      return parseCounters(out);
    } catch {
      return null;
    }
  }

  /**
   * Change the kernel from `from` to `to`: additions first (so nothing is ever missing on the
   * way), then removals. With `tolerant`, failures are collected instead of thrown.
   */
  private async converge(
    from: GuardState,
    to: GuardState,
    at: { table: number; priority: number },
    tolerant = false,
  ): Promise<GuardChange> {
    const done: string[] = [];
    const warnings: string[] = [];
    const name = guardTableName(at.table);
    const run = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
        done.push(what);
      } catch (e) {
        const msg = e instanceof CommandError ? e.stderr : String(e);
        if (tolerant) {
          if (!ABSENT.test(msg)) warnings.push(e instanceof Error ? e.message : msg);
        } else throw e;
      }
    };
    if (to.nft !== null) {
      const body = to.nft;
      await run(`nft table ip ${name}`, () =>
        this.runner.nft(["-f", "-"], replaceScript(name, body)),
      );
    }
    const fromRoutes = new Set(from.routes.map(routeKey));
    const toRoutes = new Set(to.routes.map(routeKey));
    const fromRules = new Set(from.rules.map(ruleKey));
    const toRules = new Set(to.rules.map(ruleKey));
    for (const r of to.routes)
      if (!fromRoutes.has(routeKey(r))) {
        const args = routeArgs("replace", r, at.table);
        await run(`ip ${args.join(" ")}`, () => this.runner.ip(args));
      }
    for (const r of to.rules)
      if (!fromRules.has(ruleKey(r))) {
        const args = ruleArgs("add", r, at.table, at.priority);
        await run(`ip ${args.join(" ")}`, () => this.runner.ip(args));
      }
    for (const r of from.rules)
      if (!toRules.has(ruleKey(r))) {
        const args = ruleArgs("del", r, at.table, at.priority);
        await run(`ip ${args.join(" ")}`, () => this.runner.ip(args));
      }
    for (const r of from.routes)
      if (!toRoutes.has(routeKey(r))) {
        const args = routeArgs("del", r, at.table);
        await run(`ip ${args.join(" ")}`, () => this.runner.ip(args));
      }
    if (to.nft === null && from.nft !== null)
      await run(`nft delete table ip ${name}`, () =>
        this.runner.nft(["delete", "table", "ip", name]),
      );
    return { done, warnings };
  }

  private readFile(): string | null {
    if (!this.stateFile) return null;
    try {
      return readFileSync(this.stateFile, "utf8");
    } catch {
      return null;
    }
  }

  private writeFile(): void {
    const file = this.stateFile;
    if (!file) return;
    const d = desiredGuard(this.spec);
    const state: GuardFile = {
      owner: selfRecord(this.spec.tun, undefined),
      table: this.spec.table,
      priority: this.spec.priority,
      nftTable: this.nftTable,
      rules: d.rules,
      routes: d.routes,
    };
    writeJsonAtomic(file, state);
  }
}
