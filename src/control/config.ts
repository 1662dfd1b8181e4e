/**
 * Settings for `tunnat run` and `tunnat check`, merged from (lowest to highest) built-in defaults <
 * the JSON config file (--config FILE / TUNNAT_CONFIG) < TUNNAT_* environment < command-line flags,
 * and validated by the hand-written schema below. Every error names the field as the user wrote it
 * (--max-flows, TUNNAT_MAX_FLOWS or "maxFlows" in FILE) and the bad value, and exits 2.
 *
 * The result is the core's NatConfig (src/nat/config.ts) plus ControlSettings for the daemon.
 */
import { readFileSync } from "node:fs";
import { ErrorCode, TunnatError } from "../base/errors.js";
import type { Forward } from "../nat/config.js";
import {
  AWS_PORTS,
  AWS_TIMEOUTS,
  DEFAULT_TIMEOUTS,
  defaultNatConfig,
  type NatConfig,
} from "../nat/config.js";
import type { EgressRule } from "../nat/egress.js";
import {
  type Cidr,
  cidrContains,
  cidrOverlaps,
  formatCidr,
  formatIpv4,
  parseCidr,
  parseIpv4,
} from "../wire/addr.js";
import { egressRuleText, parseEgressRule, parseForward, RuleError } from "./policy-config.js";

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";
export type Preset = "default" | "aws";
export type MappingLog = { kind: "off" } | { kind: "stdout" } | { kind: "file"; path: string };

export interface HostPort {
  host: string;
  port: number;
}

/** What the daemon needs besides the core's NatConfig. */
export interface ControlSettings {
  /** The config file read, if any (SIGHUP re-reads it). */
  configFile: string | undefined;
  insideInterface: string | undefined;
  outsideInterface: string | undefined;
  tun: string;
  /** Address put on the TUN (a link-local /32 by default); null = none. */
  tunAddress: Cidr | null;
  metrics: HostPort;
  controlSocket: string;
  /** Group (gid) allowed to use the control socket (mode 0660); undefined = owner only (0600). */
  controlSocketGroup: number | undefined;
  /** The plumbing's undo journal: survives a crash so the next start removes the leftovers. */
  stateFile: string;
  logLevel: LogLevel;
  preset: Preset;
  manageRoutes: boolean;
  /** Policy routing table and rule priority owned by tunnat (stale ones are removed at start). */
  routeTable: number;
  rulePriority: number;
  /** Set net.ipv4.ip_forward=1 when it is 0 instead of refusing to start. */
  setIpForward: boolean;
  offloads: boolean;
  mappingLog: MappingLog;
  logDestinations: boolean;
  /** Inside hosts with their own per-host metric series; the rest are summed as "other". */
  topHosts: number;
  /** Shared-address mode: the address tunnat translates to, routed into the TUN. */
  internalAddress: number;
  /** --ports as given (null = its default), and where: shared-address mode checks it. */
  portsGiven: [number, number] | null;
  portsWhere: string;
}

export interface TunnatConfig {
  nat: NatConfig;
  control: ControlSettings;
}

/** Where a value came from; used in error messages. */
export type Source = "default" | "file" | "env" | "flag";

/** A parse failure with its own explanation (replaces "expected ..."). */
class Bad {
  constructor(readonly why: string) {}
}

type Parsed<T> = T | Bad;

interface Field<T> {
  /** camelCase key; also the config file key ("timeouts.udp" = nested object). */
  key: string;
  flag: string;
  env: string;
  /** Shown after "expected" in errors and in --help. */
  expect: string;
  describe: string;
  boolean?: boolean;
  repeatable?: boolean;
  /**
   * A list whose entries may contain commas and are numbered in errors ("rule 3"); file entries
   * that are not strings go through fromFile (null = impossible shape).
   */
  list?: { noun: string; fromFile?: (v: unknown) => string | null };
  /** Default as the user would write it (parsed like any other input), or undefined. */
  def?: string;
  parse(text: string): Parsed<T>;
}

function intRange(lo: number, hi: number) {
  return (text: string): Parsed<number> => {
    if (!/^[0-9]+$/.test(text)) return new Bad(`expected an integer ${lo}..${hi}`);
    const n = Number(text);
    if (n < lo || n > hi) return new Bad(`expected an integer ${lo}..${hi}`);
    return n;
  };
}

function oneOf<T extends string>(values: readonly T[]) {
  return (text: string): Parsed<T> =>
    (values as readonly string[]).includes(text)
      ? (text as T)
      : new Bad(`expected one of ${values.join(", ")}`);
}

function parseBool(text: string): Parsed<boolean> {
  const t = text.toLowerCase();
  if (t === "true" || t === "1" || t === "yes" || t === "on") return true;
  if (t === "false" || t === "0" || t === "no" || t === "off") return false;
  return new Bad("expected true or false");
}

const MAX_TIMEOUT = 30 * 86400;
/** Seconds, optionally with an s/m/h/d suffix ("2h4m" is not accepted; "124m" is). */
function parseDuration(text: string): Parsed<number> {
  const m = /^([0-9]+)([smhd]?)$/.exec(text);
  const why = `expected a duration in seconds 1..${MAX_TIMEOUT} (suffix s, m, h or d allowed)`;
  if (!m) return new Bad(why);
  const mult = m[2] === "m" ? 60 : m[2] === "h" ? 3600 : m[2] === "d" ? 86400 : 1;
  const n = Number(m[1]) * mult;
  if (n < 1 || n > MAX_TIMEOUT) return new Bad(why);
  return n;
}

/** Linux IFNAMSIZ is 16 with the NUL; dev_valid_name() refuses "/", ":" and whitespace. */
function parseIfName(text: string): Parsed<string> {
  if (text.length < 1 || text.length > 15 || text === "." || text === ".." || /[/:\s]/.test(text))
    return new Bad("expected an interface name of 1..15 characters without '/', ':' or spaces");
  return text;
}

function parseInsidePrefix(text: string): Parsed<Cidr> {
  const c = parseCidr(text);
  if (!c || !text.includes("/")) return new Bad("expected an IPv4 prefix like 10.0.0.0/16");
  if (c.hostBits)
    return new Bad(`host bits are set; did you mean ${formatCidr(c)}? (the prefix must be masked)`);
  if (c.len === 0)
    return new Bad("expected a prefix longer than /0 (0.0.0.0/0 would NAT the host)");
  return { addr: c.addr, len: c.len };
}

/** Addresses that can never be a NAT (outside) address. */
function specialUse(ip: number): string | null {
  const a = ip >>> 24;
  if (a === 0) return "in 0.0.0.0/8 (this network)";
  if (a === 127) return "a loopback address";
  if (a >= 224 && a <= 239) return "a multicast address";
  if (a >= 240) return "a reserved or broadcast address";
  return null;
}

function parseNatAddress(text: string): Parsed<number> {
  const ip = parseIpv4(text);
  if (ip < 0) return new Bad("expected an IPv4 address like 172.16.4.7");
  const special = specialUse(ip);
  if (special) return new Bad(`${formatIpv4(ip)} is ${special} and cannot be a NAT address`);
  return ip;
}

function parseTunAddress(text: string): Parsed<Cidr | null> {
  if (text === "none") return null;
  const c = parseCidr(text);
  if (!c) return new Bad('expected an IPv4 address with prefix like 169.254.77.1/32, or "none"');
  // Keep the host bits: this is an interface address, not a route.
  return { addr: parseIpv4(text.split("/")[0] ?? ""), len: c.len };
}

function parseHostPort(text: string): Parsed<HostPort> {
  const why = "expected HOST:PORT with an IPv4 address, [IPv6] or localhost, port 1..65535";
  const m = /^(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):([0-9]{1,5})$/.exec(text);
  if (!m) return new Bad(why);
  const host = m[1] ?? "";
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return new Bad(why);
  if (!host.startsWith("[") && host !== "localhost" && parseIpv4(host) < 0) return new Bad(why);
  return { host: host.startsWith("[") ? host.slice(1, -1) : host, port };
}

function parsePorts(text: string): Parsed<[number, number]> {
  const why = "expected a port range LO-HI within 1-65535 with LO <= HI";
  const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(text);
  if (!m) return new Bad(why);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo < 1 || hi > 65535 || lo > hi) return new Bad(why);
  return [lo, hi];
}

function parseAbsPath(text: string): Parsed<string> {
  return text.startsWith("/") && !text.includes("\0") ? text : new Bad("expected an absolute path");
}

function parseGroup(text: string): Parsed<string> {
  return /^(\d+|[A-Za-z_][A-Za-z0-9_.-]*\$?)$/.test(text)
    ? text
    : new Bad("expected a group name or number");
}

/** A group name or number as a gid, from /etc/group (Node has no getgrnam). */
function resolveGroup(name: string, readFile: (p: string) => string): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  let text = "";
  try {
    text = readFile("/etc/group");
  } catch {
    return undefined;
  }
  for (const line of text.split("\n")) {
    const [n, , gid] = line.split(":");
    if (n === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  return undefined;
}

function parseMappingLog(text: string): Parsed<MappingLog> {
  if (text === "off") return { kind: "off" };
  if (text === "stdout" || text === "-") return { kind: "stdout" };
  if (text.length === 0 || text.includes("\0"))
    return new Bad('expected "off", "stdout" or a file');
  return { kind: "file", path: text };
}

function parseRouteTable(text: string): Parsed<number> {
  const why = "expected a routing table id 1..4294967295 other than 253, 254, 255";
  if (!/^[0-9]+$/.test(text)) return new Bad(why);
  const n = Number(text);
  // 253/254/255 are the kernel's default, main and local tables (RT_TABLE_*): never ours.
  if (n < 1 || n > 4294967295 || n === 253 || n === 254 || n === 255) return new Bad(why);
  return n;
}

/** A RuleError as a Bad naming the field. */
function ruleParse<T>(parse: (text: string) => T | RuleError) {
  return (text: string): Parsed<T> => {
    const r = parse(text);
    return r instanceof RuleError ? new Bad(String(r)) : r;
  };
}

function field<T>(f: Field<T>): Field<T> {
  return f;
}

/** The schema. Order is the order of --help. */
export const FIELDS = {
  inside: field<Cidr>({
    key: "inside",
    flag: "inside",
    env: "TUNNAT_INSIDE",
    repeatable: true,
    expect: "an IPv4 prefix",
    describe: "inside prefix whose traffic is translated (repeatable, required)",
    parse: parseInsidePrefix,
  }),
  insideInterface: field<string>({
    key: "insideInterface",
    flag: "inside-interface",
    env: "TUNNAT_INSIDE_INTERFACE",
    expect: "an interface name",
    describe: "interface the inside hosts' traffic arrives on (required with route management)",
    parse: parseIfName,
  }),
  natAddress: field<number>({
    key: "natAddress",
    flag: "nat-address",
    env: "TUNNAT_NAT_ADDRESS",
    repeatable: true,
    expect: "an IPv4 address",
    describe: "NAT (outside) address the host does not own itself (repeatable, required)",
    parse: parseNatAddress,
  }),
  outsideInterface: field<string>({
    key: "outsideInterface",
    flag: "outside-interface",
    env: "TUNNAT_OUTSIDE_INTERFACE",
    expect: "an interface name",
    describe: "interface facing the internet (MTU, proxy ARP; required with route management)",
    parse: parseIfName,
  }),
  tun: field<string>({
    key: "tun",
    flag: "tun",
    env: "TUNNAT_TUN",
    def: "tunnat0",
    expect: "an interface name",
    describe: "TUN device name",
    parse: parseIfName,
  }),
  tunAddress: field<Cidr | null>({
    key: "tunAddress",
    flag: "tun-address",
    env: "TUNNAT_TUN_ADDRESS",
    def: "169.254.77.1/32",
    expect: "ADDR/LEN or none",
    describe: 'address given to the TUN device, or "none"',
    parse: parseTunAddress,
  }),
  metrics: field<HostPort>({
    key: "metrics",
    flag: "metrics",
    env: "TUNNAT_METRICS",
    def: "127.0.0.1:9469",
    expect: "HOST:PORT",
    describe: "listen address for /metrics and /healthz",
    parse: parseHostPort,
  }),
  maxFlows: field<number>({
    key: "maxFlows",
    flag: "max-flows",
    env: "TUNNAT_MAX_FLOWS",
    def: "262144",
    expect: "an integer 1024..16777216",
    describe: "connection table capacity",
    parse: intRange(1024, 16_777_216),
  }),
  ports: field<[number, number]>({
    key: "ports",
    flag: "ports",
    env: "TUNNAT_PORTS",
    def: "1-65535",
    expect: "LO-HI",
    describe: "outside port range for TCP and UDP mappings",
    parse: parsePorts,
  }),
  mapping: field<NatConfig["mapping"]>({
    key: "mapping",
    flag: "mapping",
    env: "TUNNAT_MAPPING",
    def: "endpoint-independent",
    expect: "endpoint-independent or per-destination",
    describe: "mapping behaviour (RFC 4787 REQ-1; per-destination = AWS-like port reuse)",
    parse: oneOf(["endpoint-independent", "per-destination"] as const),
  }),
  filtering: field<NatConfig["filtering"]>({
    key: "filtering",
    flag: "filtering",
    env: "TUNNAT_FILTERING",
    def: "address-and-port-dependent",
    expect: "address-and-port-dependent, address-dependent or endpoint-independent",
    describe: "inbound filtering behaviour (RFC 4787 REQ-8)",
    parse: oneOf([
      "address-and-port-dependent",
      "address-dependent",
      "endpoint-independent",
    ] as const),
  }),
  tcpEstablished: field<number>({
    key: "timeouts.tcpEstablished",
    flag: "tcp-established-timeout",
    env: "TUNNAT_TCP_ESTABLISHED_TIMEOUT",
    expect: "seconds",
    describe: `idle timeout of established TCP flows (default ${DEFAULT_TIMEOUTS.tcpEstablished}; RFC 5382 REQ-5 minimum 7440)`,
    parse: parseDuration,
  }),
  tcpTransitory: field<number>({
    key: "timeouts.tcpTransitory",
    flag: "tcp-transitory-timeout",
    env: "TUNNAT_TCP_TRANSITORY_TIMEOUT",
    expect: "seconds",
    describe: `timeout of opening/closing TCP flows (default ${DEFAULT_TIMEOUTS.tcpTransitory}; minimum 240)`,
    parse: parseDuration,
  }),
  udp: field<number>({
    key: "timeouts.udp",
    flag: "udp-timeout",
    env: "TUNNAT_UDP_TIMEOUT",
    expect: "seconds",
    describe: `UDP mapping timeout (default ${DEFAULT_TIMEOUTS.udp}; RFC 4787 REQ-5 minimum 120)`,
    parse: parseDuration,
  }),
  icmp: field<number>({
    key: "timeouts.icmp",
    flag: "icmp-timeout",
    env: "TUNNAT_ICMP_TIMEOUT",
    expect: "seconds",
    describe: `ICMP query timeout (default ${DEFAULT_TIMEOUTS.icmp}; RFC 5508 REQ-2 minimum 60)`,
    parse: parseDuration,
  }),
  preset: field<Preset>({
    key: "preset",
    flag: "preset",
    env: "TUNNAT_PRESET",
    def: "default",
    expect: "default or aws",
    describe:
      "aws = AWS NAT Gateway behaviour: 350 s idle timeout everywhere, RST on expiry, ports 1024-65535 (the NACL ephemeral range)",
    parse: oneOf(["default", "aws"] as const),
  }),
  perHostQuota: field<number>({
    key: "perHostQuota",
    flag: "per-host-quota",
    env: "TUNNAT_PER_HOST_QUOTA",
    def: "0",
    expect: "an integer 0..16777216",
    describe: "mappings one inside host may hold per protocol, 0 = no limit (RFC 6888 REQ-4)",
    parse: intRange(0, 16_777_216),
  }),
  logLevel: field<LogLevel>({
    key: "logLevel",
    flag: "log-level",
    env: "TUNNAT_LOG_LEVEL",
    def: "info",
    expect: "trace, debug, info, warn, error, fatal or silent",
    describe: "log level",
    parse: oneOf(["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const),
  }),
  manageRoutes: field<boolean>({
    key: "manageRoutes",
    flag: "manage-routes",
    env: "TUNNAT_MANAGE_ROUTES",
    boolean: true,
    def: "true",
    expect: "true or false",
    describe: "install and remove the routes, rules, proxy ARP and sysctls (--no-manage-routes)",
    parse: parseBool,
  }),
  routeTable: field<number>({
    key: "routeTable",
    flag: "route-table",
    env: "TUNNAT_ROUTE_TABLE",
    def: "4242",
    expect: "a table id",
    describe: "policy routing table owned by tunnat",
    parse: parseRouteTable,
  }),
  rulePriority: field<number>({
    key: "rulePriority",
    flag: "rule-priority",
    env: "TUNNAT_RULE_PRIORITY",
    def: "4242",
    expect: "an integer 1..32765",
    describe: "priority of tunnat's ip rules (stale rules with it and our table are removed)",
    parse: intRange(1, 32765),
  }),
  setIpForward: field<boolean>({
    key: "setIpForward",
    flag: "set-ip-forward",
    env: "TUNNAT_SET_IP_FORWARD",
    boolean: true,
    def: "false",
    expect: "true or false",
    describe: "set net.ipv4.ip_forward=1 if it is 0 (restored on exit) instead of refusing",
    parse: parseBool,
  }),
  vnetHdr: field<boolean>({
    key: "vnetHdr",
    flag: "vnet-hdr",
    env: "TUNNAT_VNET_HDR",
    boolean: true,
    def: "true",
    expect: "true or false",
    describe: "open the TUN with IFF_VNET_HDR (needed for offloads)",
    parse: parseBool,
  }),
  offloads: field<boolean>({
    key: "offloads",
    flag: "offloads",
    env: "TUNNAT_OFFLOADS",
    boolean: true,
    expect: "true or false",
    describe: "enable TUN offloads (checksum, TSO/GSO); default: on with --vnet-hdr",
    parse: parseBool,
  }),
  restoreTtl: field<boolean>({
    key: "restoreTtl",
    flag: "restore-ttl",
    env: "TUNNAT_RESTORE_TTL",
    boolean: true,
    def: "true",
    expect: "true or false",
    describe: "give back the TTL lost on the second pass through the kernel",
    parse: parseBool,
  }),
  icmpProhibited: field<boolean>({
    key: "icmpProhibited",
    flag: "icmp-prohibited",
    env: "TUNNAT_ICMP_PROHIBITED",
    boolean: true,
    def: "true",
    expect: "true or false",
    describe:
      "answer a packet that gets no mapping (quota, ports, table full) with ICMP 3/13 (RFC 5508 REQ-8); --no-icmp-prohibited drops it silently (REQ-9)",
    parse: parseBool,
  }),
  controlSocket: field<string>({
    key: "controlSocket",
    flag: "control-socket",
    env: "TUNNAT_CONTROL_SOCKET",
    def: "/run/tunnat/tunnat.sock",
    expect: "an absolute path",
    describe: "unix socket for tunnat flows / tunnat stats",
    parse: parseAbsPath,
  }),
  controlSocketGroup: field<string>({
    key: "controlSocketGroup",
    flag: "control-socket-group",
    env: "TUNNAT_CONTROL_SOCKET_GROUP",
    expect: "a group name or number",
    describe:
      "group that may use the control socket (mode 0660, e.g. tunnat); default: its owner only (0600)",
    parse: parseGroup,
  }),
  stateFile: field<string>({
    key: "stateFile",
    flag: "state-file",
    env: "TUNNAT_STATE_FILE",
    expect: "an absolute path",
    describe:
      "undo journal of the kernel plumbing, read at start to remove a crashed run's leftovers; default $STATE_DIRECTORY/plumbing.json under systemd (StateDirectory=), else CONTROL_SOCKET.plumbing.json",
    parse: parseAbsPath,
  }),
  mappingLog: field<MappingLog>({
    key: "mappingLog",
    flag: "mapping-log",
    env: "TUNNAT_MAPPING_LOG",
    def: "off",
    expect: "off, stdout or a file",
    describe: "log mapping creation/removal (RFC 6888 §4): off, stdout or FILE",
    parse: parseMappingLog,
  }),
  topHosts: field<number>({
    key: "topHosts",
    flag: "top-hosts",
    env: "TUNNAT_TOP_HOSTS",
    def: "20",
    expect: "an integer 0..1000",
    describe:
      'inside hosts (by bytes) with their own tunnat_host_* series; the rest are summed as host="other", which bounds the scrape',
    parse: intRange(0, 1000),
  }),
  internalAddress: field<number>({
    key: "internalAddress",
    flag: "internal-address",
    env: "TUNNAT_INTERNAL_ADDRESS",
    def: "169.254.77.2",
    expect: "an IPv4 address",
    describe:
      "shared-address mode (a --nat-address that is the outside interface's own): the address the host does not own that tunnat translates to; the kernel maps it to the shared address",
    parse: parseNatAddress,
  }),
  egress: field<EgressRule>({
    key: "egress",
    flag: "egress",
    env: "TUNNAT_EGRESS",
    repeatable: true,
    list: { noun: "egress rule", fromFile: egressRuleText },
    expect: "an egress rule",
    describe:
      'egress rule, first match decides (repeatable): "allow|deny [to=PREFIX] [from=PREFIX] [proto=tcp|udp|icmp|any] [ports=LO-HI] [answer=icmp|rst|silent]"; reloaded on SIGHUP',
    parse: ruleParse(parseEgressRule),
  }),
  forward: field<Forward>({
    key: "forwards",
    flag: "forward",
    env: "TUNNAT_FORWARD",
    repeatable: true,
    list: { noun: "forward" },
    expect: "PROTO:[NATADDR:]PORT=INSIDEADDR[:PORT]",
    describe:
      "static port forward, the only inbound (repeatable), e.g. tcp:443=10.0.1.10:8443; its port is never given to a dynamic mapping",
    parse: ruleParse(parseForward),
  }),
  logDestinations: field<boolean>({
    key: "logDestinations",
    flag: "log-destinations",
    env: "TUNNAT_LOG_DESTINATIONS",
    boolean: true,
    def: "false",
    expect: "true or false",
    describe: "include destinations in the mapping log (off by default, RFC 6888 REQ-12)",
    parse: parseBool,
  }),
} as const;

export type FieldName = keyof typeof FIELDS;
type FieldValue<K extends FieldName> = (typeof FIELDS)[K] extends Field<infer T> ? T : never;

/** Fields that may be given several times (their value is an array). */
type RepeatableName = "inside" | "natAddress" | "egress" | "forward";

/** The --config flag is not a setting itself; it says where the file is. */
export const CONFIG_FLAG = { flag: "config", env: "TUNNAT_CONFIG" } as const;

/** One raw input: the text(s) given and where. */
interface Raw {
  texts: string[];
  source: Source;
  where: string;
}

export interface LoadInput {
  /** Parsed flags keyed by their kebab-case name (yargs argv); absent = undefined. */
  flags?: Record<string, unknown>;
  env?: Record<string, string | undefined>;
  /** Read a file (tests replace it). */
  readFile?: (path: string) => string;
}

function configError(where: string, value: unknown, why: string): TunnatError {
  return new TunnatError(ErrorCode.Config, `invalid ${where} ${JSON.stringify(value)}: ${why}`);
}

/** Flatten a file/flag value into texts; returns null for impossible shapes (objects). */
function toTexts(v: unknown, repeatable: boolean): string[] | null {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v)) {
    if (!repeatable && v.length > 1) return v.map((x) => String(x)).slice(-1); // last wins
    const out: string[] = [];
    for (const x of v) {
      const t = toTexts(x, repeatable);
      if (t === null) return null;
      out.push(...t);
    }
    return out;
  }
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return [String(v)];
  return null;
}

/** File entries of a list field: strings, or what fromFile makes of other shapes. */
function listTexts(v: unknown, fromFile?: (v: unknown) => string | null): string[] | null {
  const items = Array.isArray(v) ? v : [v];
  const out: string[] = [];
  for (const x of items) {
    const t = typeof x === "string" ? x : fromFile ? fromFile(x) : null;
    if (t === null) return null;
    out.push(t);
  }
  return out;
}

function splitList(texts: string[], repeatable: boolean, list = false): string[] {
  if (!repeatable) return texts;
  if (list) return texts.map((t) => t.trim()).filter((t) => t !== "");
  const out: string[] = [];
  for (const t of texts)
    for (const part of t.split(",")) if (part.trim() !== "") out.push(part.trim());
  return out;
}

/** Read and flatten the JSON config file into field key -> value. */
function readConfigFile(
  path: string,
  readFile: (p: string) => string,
): Map<string, { value: unknown; key: string }> {
  let text: string;
  try {
    text = readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new TunnatError(
      ErrorCode.ConfigFile,
      `cannot read config file ${path}: ${code}; check the --config path and its permissions`,
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new TunnatError(
      ErrorCode.ConfigFile,
      `config file ${path} is not valid JSON: ${(e as Error).message}`,
    );
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc))
    throw new TunnatError(ErrorCode.ConfigFile, `config file ${path} must hold a JSON object`);
  const known = new Set<string>(Object.values(FIELDS).map((f) => f.key));
  const out = new Map<string, { value: unknown; key: string }>();
  const walk = (obj: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix + k;
      if (key === "timeouts" && typeof v === "object" && v !== null && !Array.isArray(v)) {
        walk(v as Record<string, unknown>, "timeouts.");
        continue;
      }
      if (!known.has(key))
        throw new TunnatError(
          ErrorCode.Config,
          `unknown setting "${key}" in ${path}; known settings: ${[...known].join(", ")}`,
        );
      out.set(key, { value: v, key });
    }
  };
  walk(doc as Record<string, unknown>, "");
  return out;
}

export interface Resolved {
  values: {
    [K in FieldName]: (K extends RepeatableName ? FieldValue<K>[] : FieldValue<K>) | undefined;
  };
  /** Where each set value came from, for cross-field error messages. */
  origin: { [K in FieldName]?: { where: string; text: string; source: Source } };
  configFile: string | undefined;
}

/** Merge and parse every field; cross-field rules are applied by loadConfig. */
export function resolveSettings(input: LoadInput): Resolved {
  const flags = input.flags ?? {};
  const env = input.env ?? {};
  const readFile = input.readFile ?? ((p: string) => readFileSync(p, "utf8"));

  const cfgFlag = flags[CONFIG_FLAG.flag];
  const cfgTexts = toTexts(cfgFlag, false);
  let configFile: string | undefined;
  if (cfgTexts && cfgTexts.length > 0) configFile = cfgTexts[cfgTexts.length - 1];
  else if (env[CONFIG_FLAG.env] !== undefined && env[CONFIG_FLAG.env] !== "")
    configFile = env[CONFIG_FLAG.env];
  const file = configFile !== undefined ? readConfigFile(configFile, readFile) : new Map();

  const values = {} as Resolved["values"];
  const origin: Resolved["origin"] = {};
  for (const name of Object.keys(FIELDS) as FieldName[]) {
    const f: Field<unknown> = FIELDS[name];
    const repeatable = f.repeatable === true;
    // Highest layer that sets the field wins; repeatable fields are not merged across layers.
    let raw: Raw | null = null;
    const flagVal = flags[f.flag];
    if (flagVal !== undefined) {
      const texts = toTexts(flagVal, repeatable);
      if (texts === null) throw configError(`--${f.flag}`, flagVal, `expected ${f.expect}`);
      raw = { texts: splitList(texts, repeatable, !!f.list), source: "flag", where: `--${f.flag}` };
    } else if (env[f.env] !== undefined) {
      // A list in the environment: one entry per line.
      const texts = f.list ? (env[f.env] ?? "").split("\n") : [env[f.env] ?? ""];
      raw = { texts: splitList(texts, repeatable, !!f.list), source: "env", where: f.env };
    } else if (file.has(f.key)) {
      const v = file.get(f.key)?.value;
      const texts = f.list ? listTexts(v, f.list.fromFile) : toTexts(v, repeatable);
      const where = `"${f.key}" in ${configFile}`;
      if (texts === null) throw configError(where, v, `expected ${f.expect}`);
      raw = { texts: splitList(texts, repeatable, !!f.list), source: "file", where };
    } else if (f.def !== undefined) {
      raw = { texts: [f.def], source: "default", where: `default of --${f.flag}` };
    }
    if (raw === null) {
      (values as Record<string, unknown>)[name] = undefined;
      continue;
    }
    if (!repeatable && raw.texts.length === 0) raw.texts = [""];
    const parsed: unknown[] = [];
    for (const [i, text] of raw.texts.entries()) {
      const p = f.parse(text);
      if (p instanceof Bad)
        throw configError(raw.where, text, f.list ? `${f.list.noun} ${i + 1}, ${p.why}` : p.why);
      parsed.push(p);
    }
    (values as Record<string, unknown>)[name] = repeatable ? parsed : parsed[parsed.length - 1];
    (origin as Record<string, unknown>)[name] = {
      where: raw.where,
      text: raw.texts.join(","),
      source: raw.source,
    };
  }
  return { values, origin, configFile };
}

/**
 * A forward's inside host must be in an inside prefix (its replies come through the TUN only
 * from there), its NAT address one of --nat-address, and no two forwards may claim the same
 * protocol and port on the same NAT address.
 */
function validateForwards(
  forwards: Forward[],
  inside: Cidr[],
  natAddresses: number[],
  where: string,
): void {
  forwards.forEach((fw, i) => {
    const at = where;
    const n = `forward ${i + 1}, `;
    if (!inside.some((p) => cidrContains(p, fw.inside)))
      throw configError(
        at,
        fw.text,
        `${n}field "inside address": ${formatIpv4(fw.inside)} is in no --inside prefix (${inside.map(formatCidr).join(", ")})`,
      );
    if (fw.natAddress !== null && !natAddresses.includes(fw.natAddress))
      throw configError(
        at,
        fw.text,
        `${n}field "nat address": ${formatIpv4(fw.natAddress)} is not one of --nat-address (${natAddresses.map(formatIpv4).join(", ")})`,
      );
    for (let j = 0; j < i; j++) {
      const o = forwards[j] as Forward;
      if (
        o.proto === fw.proto &&
        o.port === fw.port &&
        (o.natAddress === null || fw.natAddress === null || o.natAddress === fw.natAddress)
      )
        throw configError(
          at,
          fw.text,
          `${n}field "port": forward ${j + 1} (${o.text}) already uses it`,
        );
    }
  });
}

/** RFC minimums for the timeouts, and why (checked unless the aws preset is chosen). */
const TIMEOUT_MINIMUMS = {
  tcpEstablished: { min: 7440, why: "RFC 5382 REQ-5 requires at least 7440 s (2 h 4 min)" },
  tcpTransitory: { min: 240, why: "RFC 5382 REQ-5 requires at least 240 s (4 min)" },
  udp: { min: 120, why: "RFC 4787 REQ-5 requires at least 120 s (2 min)" },
  icmp: { min: 60, why: "RFC 5508 REQ-2 requires at least 60 s" },
} as const;

/** Load, merge and validate everything; throws TunnatError(TUNNAT_ERR_CONFIG) naming the field. */
export function loadConfig(input: LoadInput): TunnatConfig {
  const { values: v, origin, configFile } = resolveSettings(input);
  const flagHint = (name: FieldName) => {
    const f = FIELDS[name];
    return `--${f.flag}, ${f.env} or "${f.key}" in the config file`;
  };
  const inside = (v.inside as Cidr[] | undefined) ?? [];
  const natAddresses = (v.natAddress as number[] | undefined) ?? [];
  if (inside.length === 0)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --inside: give at least one inside prefix (${flagHint("inside")}), e.g. --inside 10.0.0.0/16`,
    );
  if (natAddresses.length === 0)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --nat-address: give at least one NAT address (${flagHint("natAddress")})`,
    );
  const seen = new Set<number>();
  for (const a of natAddresses) {
    if (seen.has(a))
      throw configError(origin.natAddress?.where ?? "--nat-address", formatIpv4(a), "listed twice");
    seen.add(a);
  }
  // RFC 4787 REQ-7: the inside network must not use addresses that conflict with the outside.
  // A NAT address inside an inside prefix would be thrown back to the main table and its replies
  // would never reach the TUN.
  for (const a of natAddresses)
    for (const p of inside)
      if (cidrContains(p, a))
        throw configError(
          origin.natAddress?.where ?? "--nat-address",
          formatIpv4(a),
          `lies inside the inside prefix ${formatCidr(p)}; RFC 4787 REQ-7 needs inside and outside addresses that do not conflict: choose a NAT address outside every --inside prefix`,
        );
  for (let i = 0; i < inside.length; i++)
    for (let j = i + 1; j < inside.length; j++) {
      const a = inside[i] as Cidr;
      const b = inside[j] as Cidr;
      if (cidrOverlaps(a, b))
        throw configError(
          origin.inside?.where ?? "--inside",
          formatCidr(b),
          `overlaps ${formatCidr(a)}; list each inside prefix once`,
        );
    }

  const forwards = (v.forward as Forward[] | undefined) ?? [];
  validateForwards(forwards, inside, natAddresses, origin.forward?.where ?? "--forward");
  const egress = (v.egress as EgressRule[] | undefined) ?? [];

  const preset = v.preset as Preset;
  const base = preset === "aws" ? AWS_TIMEOUTS : DEFAULT_TIMEOUTS;
  const timeouts = { ...base };
  for (const k of ["tcpEstablished", "tcpTransitory", "udp", "icmp"] as const) {
    const given = v[k] as number | undefined;
    if (given === undefined) continue;
    const rule = TIMEOUT_MINIMUMS[k];
    if (preset !== "aws" && given < rule.min)
      throw configError(
        origin[k]?.where ?? `--${FIELDS[k].flag}`,
        origin[k]?.text ?? String(given),
        `${rule.why}; use --preset aws to accept the AWS NAT Gateway's shorter idle timeouts`,
      );
    timeouts[k] = given;
  }

  const manageRoutes = v.manageRoutes as boolean;
  const insideInterface = v.insideInterface as string | undefined;
  const outsideInterface = v.outsideInterface as string | undefined;
  if (manageRoutes && insideInterface === undefined)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --inside-interface: route management needs the interface inside traffic arrives on (${flagHint("insideInterface")}), or use --no-manage-routes`,
    );
  if (manageRoutes && outsideInterface === undefined)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --outside-interface: route management needs the interface facing the internet (${flagHint("outsideInterface")}), or use --no-manage-routes`,
    );

  const vnetHdr = v.vnetHdr as boolean;
  const offloadsGiven = v.offloads as boolean | undefined;
  if (offloadsGiven === true && !vnetHdr)
    throw configError(
      origin.offloads?.where ?? "--offloads",
      origin.offloads?.text ?? "true",
      "offloads need the virtio_net_hdr: drop --no-vnet-hdr or turn offloads off",
    );
  // The aws preset narrows the default range to the NACL ephemeral ports; a given --ports wins.
  const ports =
    preset === "aws" && origin.ports?.source === "default"
      ? ([...AWS_PORTS] as [number, number])
      : (v.ports as [number, number]);

  const groupName = v.controlSocketGroup as string | undefined;
  let controlSocketGroup: number | undefined;
  if (groupName !== undefined) {
    controlSocketGroup = resolveGroup(
      groupName,
      input.readFile ?? ((p: string) => readFileSync(p, "utf8")),
    );
    if (controlSocketGroup === undefined)
      throw configError(
        origin.controlSocketGroup?.where ?? "--control-socket-group",
        groupName,
        "no such group in /etc/group; create it (systemd-sysusers) or give its number",
      );
  }
  // systemd's StateDirectory= survives restarts (RuntimeDirectory= is emptied when the service
  // stops, crashes included, which would lose the journal exactly when it is needed).
  const stateDirectory = (input.env?.STATE_DIRECTORY ?? "").split(":")[0];
  const stateFile =
    (v.stateFile as string | undefined) ??
    (stateDirectory?.startsWith("/")
      ? `${stateDirectory}/plumbing.json`
      : `${v.controlSocket as string}.plumbing.json`);

  const nat = defaultNatConfig({
    natAddresses,
    inside,
    portLo: ports[0],
    portHi: ports[1],
    mapping: v.mapping as NatConfig["mapping"],
    filtering: v.filtering as NatConfig["filtering"],
    timeouts,
    rstOnExpired: preset === "aws",
    maxFlows: v.maxFlows as number,
    perHostQuota: v.perHostQuota as number,
    vnetHdr,
    restoreTtl: v.restoreTtl as boolean,
    icmpAdminProhibited: v.icmpProhibited as boolean,
    egress,
    forwards,
  });
  const control: ControlSettings = {
    configFile,
    insideInterface,
    outsideInterface,
    tun: v.tun as string,
    tunAddress: v.tunAddress as Cidr | null,
    metrics: v.metrics as HostPort,
    controlSocket: v.controlSocket as string,
    controlSocketGroup,
    stateFile,
    logLevel: v.logLevel as LogLevel,
    preset,
    manageRoutes,
    routeTable: v.routeTable as number,
    rulePriority: v.rulePriority as number,
    setIpForward: v.setIpForward as boolean,
    offloads: offloadsGiven ?? vnetHdr,
    mappingLog: v.mappingLog as MappingLog,
    logDestinations: v.logDestinations as boolean,
    topHosts: v.topHosts as number,
    internalAddress: v.internalAddress as number,
    portsGiven: origin.ports?.source === "default" ? null : (v.ports as [number, number]),
    portsWhere: origin.ports?.where ?? "--ports",
  };
  return { nat, control };
}

/** One setting a reload saw change: its config-file key and the old and new values as shown. */
export interface SettingChange {
  field: string;
  old: string;
  new: string;
}

function mappingLogText(m: MappingLog): string {
  return m.kind === "file" ? m.path : m.kind;
}

/**
 * Every setting a user can give, by its config-file key, as the text a reload report shows.
 * `live` ones take effect on SIGHUP; the others need a restart. A test checks that every field of
 * NatConfig and ControlSettings is either listed here or deliberately not a setting.
 */
export const RELOADABLE_SETTINGS: readonly [string, boolean, (c: TunnatConfig) => string][] = [
  ["logLevel", true, (c) => c.control.logLevel],
  ["timeouts.tcpEstablished", true, (c) => String(c.nat.timeouts.tcpEstablished)],
  ["timeouts.tcpTransitory", true, (c) => String(c.nat.timeouts.tcpTransitory)],
  ["timeouts.udp", true, (c) => String(c.nat.timeouts.udp)],
  ["timeouts.icmp", true, (c) => String(c.nat.timeouts.icmp)],
  ["inside", false, (c) => c.nat.inside.map(formatCidr).join(",")],
  ["natAddress", false, (c) => c.nat.natAddresses.map(formatIpv4).join(",")],
  ["ports", false, (c) => `${c.nat.portLo}-${c.nat.portHi}`],
  ["mapping", false, (c) => c.nat.mapping],
  ["filtering", false, (c) => c.nat.filtering],
  ["preset", false, (c) => c.control.preset],
  ["maxFlows", false, (c) => String(c.nat.maxFlows)],
  ["perHostQuota", false, (c) => String(c.nat.perHostQuota)],
  ["vnetHdr", false, (c) => String(c.nat.vnetHdr)],
  ["offloads", false, (c) => String(c.control.offloads)],
  ["restoreTtl", false, (c) => String(c.nat.restoreTtl)],
  ["icmpProhibited", false, (c) => String(c.nat.icmpAdminProhibited)],
  ["insideInterface", false, (c) => c.control.insideInterface ?? ""],
  ["outsideInterface", false, (c) => c.control.outsideInterface ?? ""],
  ["tun", false, (c) => c.control.tun],
  ["tunAddress", false, (c) => (c.control.tunAddress ? formatCidr(c.control.tunAddress) : "none")],
  ["metrics", false, (c) => `${c.control.metrics.host}:${c.control.metrics.port}`],
  ["controlSocket", false, (c) => c.control.controlSocket],
  ["controlSocketGroup", false, (c) => String(c.control.controlSocketGroup ?? "none")],
  ["stateFile", false, (c) => c.control.stateFile],
  ["manageRoutes", false, (c) => String(c.control.manageRoutes)],
  ["routeTable", false, (c) => String(c.control.routeTable)],
  ["rulePriority", false, (c) => String(c.control.rulePriority)],
  ["setIpForward", false, (c) => String(c.control.setIpForward)],
  ["mappingLog", false, (c) => mappingLogText(c.control.mappingLog)],
  ["logDestinations", false, (c) => String(c.control.logDestinations)],
  ["internalAddress", false, (c) => formatIpv4(c.control.internalAddress)],
  ["egress", true, (c) => c.nat.egress.map((r) => r.text).join("; ")],
  ["forwards", false, (c) => c.nat.forwards.map((f) => f.text).join("; ")],
  ["topHosts", false, (c) => String(c.control.topHosts)],
];

/**
 * What a reload from `cur` to `next` changes: the settings applied live and, each with its old
 * and new value, the ones that keep their old value until a restart.
 */
export function reloadChanges(
  cur: TunnatConfig,
  next: TunnatConfig,
): { applied: SettingChange[]; needRestart: SettingChange[] } {
  const applied: SettingChange[] = [];
  const needRestart: SettingChange[] = [];
  for (const [field, live, read] of RELOADABLE_SETTINGS) {
    const a = read(cur);
    const b = read(next);
    if (a !== b) (live ? applied : needRestart).push({ field, old: a, new: b });
  }
  return { applied, needRestart };
}

/** A JSON-friendly view of the effective settings (for `tunnat check --json` and the start log). */
export function describeConfig(c: TunnatConfig): Record<string, unknown> {
  return {
    inside: c.nat.inside.map(formatCidr),
    natAddresses: c.nat.natAddresses.map(formatIpv4),
    ports: `${c.nat.portLo}-${c.nat.portHi}`,
    mapping: c.nat.mapping,
    filtering: c.nat.filtering,
    timeouts: c.nat.timeouts,
    rstOnExpired: c.nat.rstOnExpired,
    maxFlows: c.nat.maxFlows,
    perHostQuota: c.nat.perHostQuota,
    vnetHdr: c.nat.vnetHdr,
    egress: c.nat.egress.map((r) => r.text),
    forwards: c.nat.forwards.map((f) => f.text),
    ...c.control,
    tunAddress: c.control.tunAddress ? formatCidr(c.control.tunAddress) : null,
    metrics: `${c.control.metrics.host}:${c.control.metrics.port}`,
  };
}
