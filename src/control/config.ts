/**
 * Settings for `tunnat run`, `tunnat down` and `tunnat check`, merged from (lowest to highest)
 * built-in defaults < the JSON config file (--config FILE / TUNNAT_CONFIG) < TUNNAT_* environment
 * < command-line flags. Every error names the field as the user wrote it (--max-flows,
 * TUNNAT_MAX_FLOWS or "maxFlows" in FILE) and the bad value, and exits 2.
 *
 * One schema (FIELDS) defines each setting once: its names, its kind (how its text is parsed and
 * shown), its default, whether SIGHUP applies it, and where its value goes. Everything else is
 * derived from it: the flags the CLI declares, the types (Settings, ControlSettings), the merge,
 * the reload report and describeConfig(). Adding a setting = one FIELDS entry, plus a NatConfig
 * member when the core reads it (docs/architecture.md §Decisions).
 *
 * The result is the core's NatConfig (src/nat/config.ts) plus ControlSettings for the daemon.
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { ErrorCode, TunnatError } from "../base/errors.js";
import { TIMEOUT_SPECS } from "../base/protocols.js";
import type { Forward } from "../nat/config.js";
import {
  AWS_PORTS,
  AWS_TIMEOUTS,
  DEFAULT_TIMEOUTS,
  defaultNatConfig,
  type NatConfig,
  type Timeouts,
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

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
type Preset = "default" | "aws";
type MappingLog = { kind: "off" } | { kind: "stdout" } | { kind: "file"; path: string };

export interface HostPort {
  host: string;
  port: number;
}

/** Where a value came from; used in error messages. */
type Source = "default" | "file" | "env" | "flag";

/** A parse failure with its own explanation (replaces "expected ..."). */
class Bad {
  constructor(readonly why: string) {}
}

type Parsed<T> = T | Bad;

/** A JSON value as describeConfig() shows it. */
type Shown = string | number | boolean | null | Shown[] | { [k: string]: Shown };

/**
 * The kind of a setting's value: how its text is read, and how a value is written back (the reload
 * report compares these texts; describeConfig shows them). format(parse(x)) reads as x does.
 */
interface Kind<T> {
  /** Shown after "expected" when a value has an impossible shape (a JSON object, say). */
  expect: string;
  parse(text: string): Parsed<T>;
  format(value: T): string;
  /** A JSON value for describeConfig (default: format(), numbers and booleans written plainly as such). */
  json?(value: T): Shown;
}

function intRange(lo: number, hi: number): Kind<number> {
  const why = `expected an integer ${lo}..${hi}`;
  return {
    expect: `an integer ${lo}..${hi}`,
    parse: (text) => {
      if (!/^[0-9]+$/.test(text)) return new Bad(why);
      const n = Number(text);
      return n < lo || n > hi ? new Bad(why) : n;
    },
    format: String,
  };
}

function oneOf<T extends string>(values: readonly T[]): Kind<T> {
  return {
    expect: `one of ${values.join(", ")}`,
    parse: (text) =>
      (values as readonly string[]).includes(text)
        ? (text as T)
        : new Bad(`expected one of ${values.join(", ")}`),
    format: (v) => v,
  };
}

/** A boolean; on the command line a bare --flag means true and --no-flag false. */
const BOOL: Kind<boolean> = {
  expect: "true or false",
  parse: (text) => {
    const t = text.toLowerCase();
    if (t === "true" || t === "1" || t === "yes" || t === "on") return true;
    if (t === "false" || t === "0" || t === "no" || t === "off") return false;
    return new Bad("expected true or false");
  },
  format: String,
};

const MAX_TIMEOUT = 30 * 86400;
/** Seconds, optionally with an s/m/h/d suffix ("2h4m" is not accepted; "124m" is). */
const DURATION: Kind<number> = {
  expect: "seconds",
  parse: (text) => {
    const m = /^([0-9]+)([smhd]?)$/.exec(text);
    const why = `expected a duration in seconds 1..${MAX_TIMEOUT} (suffix s, m, h or d allowed)`;
    if (!m) return new Bad(why);
    const mult = m[2] === "m" ? 60 : m[2] === "h" ? 3600 : m[2] === "d" ? 86400 : 1;
    const n = Number(m[1]) * mult;
    return n < 1 || n > MAX_TIMEOUT ? new Bad(why) : n;
  },
  format: String,
};

/** Linux IFNAMSIZ is 16 with the NUL; dev_valid_name() refuses "/", ":" and whitespace. */
const IF_NAME: Kind<string> = {
  expect: "an interface name",
  parse: (text) =>
    text.length < 1 || text.length > 15 || text === "." || text === ".." || /[/:\s]/.test(text)
      ? new Bad("expected an interface name of 1..15 characters without '/', ':' or spaces")
      : text,
  format: (v) => v,
};

const INSIDE_PREFIX: Kind<Cidr> = {
  expect: "an IPv4 prefix",
  parse: (text) => {
    const c = parseCidr(text);
    if (!c || !text.includes("/")) return new Bad("expected an IPv4 prefix like 10.0.0.0/16");
    if (c.hostBits)
      return new Bad(
        `host bits are set; did you mean ${formatCidr(c)}? (the prefix must be masked)`,
      );
    if (c.len === 0)
      return new Bad("expected a prefix longer than /0 (0.0.0.0/0 would NAT the host)");
    return { addr: c.addr, len: c.len };
  },
  format: formatCidr,
};

/** Addresses that can never be a NAT (outside) address. */
function specialUse(ip: number): string | null {
  const a = ip >>> 24;
  if (a === 0) return "in 0.0.0.0/8 (this network)";
  if (a === 127) return "a loopback address";
  if (a >= 224 && a <= 239) return "a multicast address";
  if (a >= 240) return "a reserved or broadcast address";
  return null;
}

const NAT_ADDRESS: Kind<number> = {
  expect: "an IPv4 address",
  parse: (text) => {
    const ip = parseIpv4(text);
    if (ip < 0) return new Bad("expected an IPv4 address like 172.16.4.7");
    const special = specialUse(ip);
    if (special) return new Bad(`${formatIpv4(ip)} is ${special} and cannot be a NAT address`);
    return ip;
  },
  format: formatIpv4,
};

const TUN_ADDRESS: Kind<Cidr | null> = {
  expect: "ADDR/LEN or none",
  parse: (text) => {
    if (text === "none") return null;
    const c = parseCidr(text);
    if (!c) return new Bad('expected an IPv4 address with prefix like 169.254.77.1/32, or "none"');
    // Keep the host bits: this is an interface address, not a route.
    return { addr: parseIpv4(text.split("/")[0] ?? ""), len: c.len };
  },
  format: (v) => (v ? formatCidr(v) : "none"),
  json: (v) => (v ? formatCidr(v) : null),
};

const HOST_PORT: Kind<HostPort> = {
  expect: "HOST:PORT",
  parse: (text) => {
    const why = "expected HOST:PORT with an IPv4 address, [IPv6] or localhost, port 1..65535";
    const m = /^(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):([0-9]{1,5})$/.exec(text);
    if (!m) return new Bad(why);
    const host = m[1] ?? "";
    const port = Number(m[2]);
    if (port < 1 || port > 65535) return new Bad(why);
    if (!host.startsWith("[") && host !== "localhost" && parseIpv4(host) < 0) return new Bad(why);
    return { host: host.startsWith("[") ? host.slice(1, -1) : host, port };
  },
  format: (v) => `${v.host.includes(":") ? `[${v.host}]` : v.host}:${v.port}`,
};

const PORT_RANGE: Kind<[number, number]> = {
  expect: "LO-HI",
  parse: (text) => {
    const why = "expected a port range LO-HI within 1-65535 with LO <= HI";
    const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(text);
    if (!m) return new Bad(why);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi > 65535 || lo > hi) return new Bad(why);
    return [lo, hi];
  },
  format: (v) => `${v[0]}-${v[1]}`,
};

const ABS_PATH: Kind<string> = {
  expect: "an absolute path",
  parse: (text) =>
    text.startsWith("/") && !text.includes("\0") ? text : new Bad("expected an absolute path"),
  format: (v) => v,
};

/** An absolute path, or "none" (null): the table state file. */
const PATH_OR_NONE: Kind<string | null> = {
  expect: 'an absolute path or "none"',
  parse: (text) =>
    text === "none"
      ? null
      : text.startsWith("/") && !text.includes("\0")
        ? text
        : new Bad('expected an absolute path or "none"'),
  format: (v) => v ?? "none",
};

/** A duration as DURATION, or 0 (off). */
const DURATION_OR_OFF: Kind<number> = {
  expect: "a duration or 0",
  parse: (text) => (/^0+[smhd]?$/.test(text) ? 0 : DURATION.parse(text)),
  format: String,
};

/** A group name or number; loadConfig resolves it to a gid. */
const GROUP: Kind<string> = {
  expect: "a group name or number",
  parse: (text) =>
    /^(\d+|[A-Za-z_][A-Za-z0-9_.-]*\$?)$/.test(text)
      ? text
      : new Bad("expected a group name or number"),
  format: (v) => v,
};

const MAPPING_LOG: Kind<MappingLog> = {
  expect: "off, stdout or a file",
  parse: (text) => {
    if (text === "off") return { kind: "off" };
    if (text === "stdout" || text === "-") return { kind: "stdout" };
    if (text.length === 0 || text.includes("\0"))
      return new Bad('expected "off", "stdout" or a file');
    return { kind: "file", path: text };
  },
  format: (v) => (v.kind === "file" ? v.path : v.kind),
};

const ROUTE_TABLE: Kind<number> = {
  expect: "a table id",
  parse: (text) => {
    const why = "expected a routing table id 1..4294967295 other than 253, 254, 255";
    if (!/^[0-9]+$/.test(text)) return new Bad(why);
    const n = Number(text);
    // 253/254/255 are the kernel's default, main and local tables (RT_TABLE_*): never ours.
    return n < 1 || n > 4294967295 || n === 253 || n === 254 || n === 255 ? new Bad(why) : n;
  },
  format: String,
};

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

/**
 * Default --poll-us: see native-notes/README.md "Latency" for the figures behind it (idle ping,
 * the CPU the spin costs, and what it cost the forwarding under load).
 */
const DEFAULT_POLL_US = 0;

const QUEUES_WHY = "expected auto or an integer 1..256";
/**
 * --queues: "auto" or a count 1..256. auto is one queue per CPU in this process's affinity mask,
 * except on two CPUs or fewer, where it is one: measured on a quiet 2-core VM (README "Measured",
 * native-notes/README.md "Multi-queue"), two queues lost to one in every figure but many-stream
 * TCP (request/response 0.42-0.54x of the kernel against 0.70-0.71x, TCP 1 stream 0.49-0.57x
 * against 0.78-0.80x, idle
 * ping +282-332 us against +161-188 us, UDP 64 B 0.41-0.49x against 0.56-0.65x): the hand-over
 * between the I/O threads and the translator costs more than two cores win back.
 */
export const autoQueues = (cpus: number): number => (cpus <= 2 ? 1 : Math.min(256, cpus));
const QUEUES: Kind<number> = {
  expect: "auto or an integer 1..256",
  parse: (text) => {
    if (text === "auto") return autoQueues(availableParallelism());
    if (!/^[0-9]+$/.test(text)) return new Bad(QUEUES_WHY);
    const n = Number(text);
    return n < 1 || n > 256 ? new Bad(QUEUES_WHY) : n;
  },
  format: String,
};

/** An egress rule (policy-config.ts has the syntax); a failure names the rule's field. */
const EGRESS_RULE: Kind<EgressRule> = {
  expect: "an egress rule",
  parse: (text) => {
    const r = parseEgressRule(text);
    return r instanceof RuleError ? new Bad(String(r)) : r;
  },
  format: (r) => r.text,
};

/** A static port forward (policy-config.ts). */
const FORWARD: Kind<Forward> = {
  expect: "PROTO:[NATADDR:]PORT=INSIDEADDR[:PORT]",
  parse: (text) => {
    const r = parseForward(text);
    return r instanceof RuleError ? new Bad(String(r)) : r;
  },
  format: (f) => f.text,
};

/** One setting of the schema. */
interface Field {
  /** camelCase config-file key ("timeouts.udp" = nested object); also names it in reloads. */
  key: string;
  flag: string;
  env: string;
  describe: string;
  kind: Kind<unknown>;
  /** Default as the user would write it (parsed like any other input); absent = unset. */
  def?: string;
  /** May be given several times (or comma-separated); the value is a list. */
  list?: true;
  /** A list whose entries are numbered in errors ("egress rule 3, field ..."). */
  noun?: string;
  /** Config-file entries that are not strings (an egress rule as an object); null = bad shape. */
  fromFile?: (v: unknown) => string | null;
  /** SIGHUP applies a change without a restart. */
  live?: true;
  /**
   * The value is copied as it is into this part of TunnatConfig, under the field's name in
   * FIELDS (checked by the compiler against NatConfig). Absent: loadConfig derives it (timeouts,
   * ports, presets, the group's gid, defaults that depend on other fields).
   */
  to?: "nat" | "control";
}

/** The schema. Order is the order of --help and of describeConfig(). */
export const FIELDS = {
  inside: {
    key: "inside",
    flag: "inside",
    env: "TUNNAT_INSIDE",
    list: true,
    kind: INSIDE_PREFIX,
    describe: "inside prefix whose traffic is translated (repeatable, required)",
  },
  insideInterface: {
    key: "insideInterface",
    flag: "inside-interface",
    env: "TUNNAT_INSIDE_INTERFACE",
    kind: IF_NAME,
    to: "control",
    describe: "interface the inside hosts' traffic arrives on (required with route management)",
  },
  natAddress: {
    key: "natAddress",
    flag: "nat-address",
    env: "TUNNAT_NAT_ADDRESS",
    list: true,
    kind: NAT_ADDRESS,
    describe: "NAT (outside) address the host does not own itself (repeatable, required)",
  },
  outsideInterface: {
    key: "outsideInterface",
    flag: "outside-interface",
    env: "TUNNAT_OUTSIDE_INTERFACE",
    kind: IF_NAME,
    to: "control",
    describe: "interface facing the internet (MTU, proxy ARP; required with route management)",
  },
  tun: {
    key: "tun",
    flag: "tun",
    env: "TUNNAT_TUN",
    def: "tunnat0",
    kind: IF_NAME,
    to: "control",
    describe: "TUN device name",
  },
  tunAddress: {
    key: "tunAddress",
    flag: "tun-address",
    env: "TUNNAT_TUN_ADDRESS",
    def: "169.254.77.1/32",
    kind: TUN_ADDRESS,
    to: "control",
    describe: 'address given to the TUN device, or "none"',
  },
  metrics: {
    key: "metrics",
    flag: "metrics",
    env: "TUNNAT_METRICS",
    def: "127.0.0.1:9469",
    kind: HOST_PORT,
    to: "control",
    describe: "listen address for /metrics and /healthz",
  },
  maxFlows: {
    key: "maxFlows",
    flag: "max-flows",
    env: "TUNNAT_MAX_FLOWS",
    def: "262144",
    kind: intRange(1024, 16_777_216),
    to: "nat",
    describe: "connection table capacity",
  },
  ports: {
    key: "ports",
    flag: "ports",
    env: "TUNNAT_PORTS",
    def: "1-65535",
    kind: PORT_RANGE,
    describe: "outside port range for TCP and UDP mappings",
  },
  mapping: {
    key: "mapping",
    flag: "mapping",
    env: "TUNNAT_MAPPING",
    def: "endpoint-independent",
    kind: oneOf<NatConfig["mapping"]>(["endpoint-independent", "per-destination"]),
    to: "nat",
    describe: "mapping behaviour (RFC 4787 REQ-1; per-destination = AWS-like port reuse)",
  },
  filtering: {
    key: "filtering",
    flag: "filtering",
    env: "TUNNAT_FILTERING",
    def: "address-and-port-dependent",
    kind: oneOf<NatConfig["filtering"]>([
      "address-and-port-dependent",
      "address-dependent",
      "endpoint-independent",
    ]),
    to: "nat",
    describe: "inbound filtering behaviour (RFC 4787 REQ-8)",
  },
  tcpEstablished: {
    key: "timeouts.tcpEstablished",
    flag: "tcp-established-timeout",
    env: "TUNNAT_TCP_ESTABLISHED_TIMEOUT",
    kind: DURATION,
    live: true,
    describe: `idle timeout of established TCP flows (default ${DEFAULT_TIMEOUTS.tcpEstablished}; RFC 5382 REQ-5 minimum 7440)`,
  },
  tcpTransitory: {
    key: "timeouts.tcpTransitory",
    flag: "tcp-transitory-timeout",
    env: "TUNNAT_TCP_TRANSITORY_TIMEOUT",
    kind: DURATION,
    live: true,
    describe: `timeout of opening/closing TCP flows (default ${DEFAULT_TIMEOUTS.tcpTransitory}; minimum 240)`,
  },
  udp: {
    key: "timeouts.udp",
    flag: "udp-timeout",
    env: "TUNNAT_UDP_TIMEOUT",
    kind: DURATION,
    live: true,
    describe: `UDP mapping timeout (default ${DEFAULT_TIMEOUTS.udp}; RFC 4787 REQ-5 minimum 120)`,
  },
  icmp: {
    key: "timeouts.icmp",
    flag: "icmp-timeout",
    env: "TUNNAT_ICMP_TIMEOUT",
    kind: DURATION,
    live: true,
    describe: `ICMP query timeout (default ${DEFAULT_TIMEOUTS.icmp}; RFC 5508 REQ-2 minimum 60)`,
  },
  preset: {
    key: "preset",
    flag: "preset",
    env: "TUNNAT_PRESET",
    def: "default",
    kind: oneOf<Preset>(["default", "aws"]),
    to: "control",
    describe:
      "aws = AWS NAT Gateway behaviour: 350 s idle timeout everywhere, RST on expiry, ports 1024-65535 (the NACL ephemeral range)",
  },
  perHostQuota: {
    key: "perHostQuota",
    flag: "per-host-quota",
    env: "TUNNAT_PER_HOST_QUOTA",
    def: "0",
    kind: intRange(0, 16_777_216),
    to: "nat",
    describe: "mappings one inside host may hold per protocol, 0 = no limit (RFC 6888 REQ-4)",
  },
  logLevel: {
    key: "logLevel",
    flag: "log-level",
    env: "TUNNAT_LOG_LEVEL",
    def: "info",
    kind: oneOf(LOG_LEVELS),
    to: "control",
    live: true,
    describe: "log level",
  },
  manageRoutes: {
    key: "manageRoutes",
    flag: "manage-routes",
    env: "TUNNAT_MANAGE_ROUTES",
    def: "true",
    kind: BOOL,
    to: "control",
    describe: "install and remove the routes, rules, proxy ARP and sysctls (--no-manage-routes)",
  },
  routeTable: {
    key: "routeTable",
    flag: "route-table",
    env: "TUNNAT_ROUTE_TABLE",
    def: "4242",
    kind: ROUTE_TABLE,
    to: "control",
    describe: "policy routing table owned by tunnat",
  },
  rulePriority: {
    key: "rulePriority",
    flag: "rule-priority",
    env: "TUNNAT_RULE_PRIORITY",
    def: "4242",
    kind: intRange(1, 32765),
    to: "control",
    describe: "priority of tunnat's ip rules (stale rules with it and our table are removed)",
  },
  setIpForward: {
    key: "setIpForward",
    flag: "set-ip-forward",
    env: "TUNNAT_SET_IP_FORWARD",
    def: "false",
    kind: BOOL,
    to: "control",
    describe: "set net.ipv4.ip_forward=1 if it is 0 (restored on exit) instead of refusing",
  },
  vnetHdr: {
    key: "vnetHdr",
    flag: "vnet-hdr",
    env: "TUNNAT_VNET_HDR",
    def: "true",
    kind: BOOL,
    to: "nat",
    describe: "open the TUN with IFF_VNET_HDR (needed for offloads)",
  },
  offloads: {
    key: "offloads",
    flag: "offloads",
    env: "TUNNAT_OFFLOADS",
    kind: BOOL,
    describe: "enable TUN offloads (checksum, TSO/GSO); default: on with --vnet-hdr",
  },
  queues: {
    key: "queues",
    flag: "queues",
    env: "TUNNAT_QUEUES",
    def: "auto",
    kind: QUEUES,
    to: "control",
    describe:
      "TUN queues (IFF_MULTI_QUEUE), one native I/O thread each; auto: one per CPU this process may run on, or 1 on 2 CPUs or fewer; 1: the single-threaded loop",
  },
  pollUs: {
    key: "pollUs",
    flag: "poll-us",
    env: "TUNNAT_POLL_US",
    def: String(DEFAULT_POLL_US),
    kind: intRange(0, 10_000),
    to: "control",
    describe:
      "with --queues 2 or more: microseconds an idle I/O thread spins for the next packet before sleeping (0: never; 50-200 trade CPU for idle latency)",
  },
  tunQueueLength: {
    key: "tunQueueLength",
    flag: "tun-queue-length",
    env: "TUNNAT_TUN_QUEUE_LENGTH",
    kind: intRange(1, 1_000_000),
    to: "control",
    describe:
      "packets the TUN queues for the daemon before the kernel drops (its txqueuelen), set at start; default: the kernel's (500)",
  },
  restoreTtl: {
    key: "restoreTtl",
    flag: "restore-ttl",
    env: "TUNNAT_RESTORE_TTL",
    def: "true",
    kind: BOOL,
    to: "nat",
    describe: "give back the TTL lost on the second pass through the kernel",
  },
  icmpAdminProhibited: {
    key: "icmpProhibited",
    flag: "icmp-prohibited",
    env: "TUNNAT_ICMP_PROHIBITED",
    def: "true",
    kind: BOOL,
    to: "nat",
    describe:
      "answer a packet that gets no mapping (quota, ports, table full) with ICMP 3/13 (RFC 5508 REQ-8); --no-icmp-prohibited drops it silently (REQ-9)",
  },
  controlSocket: {
    key: "controlSocket",
    flag: "control-socket",
    env: "TUNNAT_CONTROL_SOCKET",
    def: "/run/tunnat/tunnat.sock",
    kind: ABS_PATH,
    to: "control",
    describe: "unix socket for tunnat flows / tunnat stats",
  },
  controlSocketGroup: {
    key: "controlSocketGroup",
    flag: "control-socket-group",
    env: "TUNNAT_CONTROL_SOCKET_GROUP",
    kind: GROUP,
    describe:
      "group that may use the control socket (mode 0660, e.g. tunnat); default: its owner only (0600)",
  },
  stateFile: {
    key: "stateFile",
    flag: "state-file",
    env: "TUNNAT_STATE_FILE",
    kind: ABS_PATH,
    describe:
      "undo journal of the kernel plumbing, read at start to remove a crashed run's leftovers; default $STATE_DIRECTORY/plumbing.json under systemd (StateDirectory=), else CONTROL_SOCKET.plumbing.json",
  },
  ha: {
    key: "ha",
    flag: "ha",
    env: "TUNNAT_HA",
    kind: ABS_PATH,
    to: "control",
    describe:
      "run as one gateway of an active/standby pair with state sync: the HA settings file (docs/ha.md)",
  },
  tableStateFile: {
    key: "tableStateFile",
    flag: "table-state-file",
    env: "TUNNAT_TABLE_STATE_FILE",
    kind: PATH_OR_NONE,
    describe:
      'where the flow table is saved at SIGTERM and by the checkpoint, and restored from at start; "none" = never; default $STATE_DIRECTORY/table.state under systemd, else CONTROL_SOCKET.table.state',
  },
  checkpointInterval: {
    key: "checkpointInterval",
    flag: "checkpoint-interval",
    env: "TUNNAT_CHECKPOINT_INTERVAL",
    def: "30s",
    kind: DURATION_OR_OFF,
    to: "control",
    describe:
      "how often the table is also saved while running, bounding what a crash or SIGKILL loses (0 = only at SIGTERM)",
  },
  mappingLog: {
    key: "mappingLog",
    flag: "mapping-log",
    env: "TUNNAT_MAPPING_LOG",
    def: "off",
    kind: MAPPING_LOG,
    to: "control",
    describe: "log mapping creation/removal (RFC 6888 §4): off, stdout or FILE",
  },
  topHosts: {
    key: "topHosts",
    flag: "top-hosts",
    env: "TUNNAT_TOP_HOSTS",
    def: "20",
    kind: intRange(0, 1000),
    to: "control",
    describe:
      'inside hosts (by bytes) with their own tunnat_host_* series; the rest are summed as host="other", which bounds the scrape',
  },
  internalAddress: {
    key: "internalAddress",
    flag: "internal-address",
    env: "TUNNAT_INTERNAL_ADDRESS",
    def: "169.254.77.2",
    kind: NAT_ADDRESS,
    to: "control",
    describe:
      "shared-address mode (a --nat-address that is the outside interface's own): the address the host does not own that tunnat translates to; the kernel maps it to the shared address",
  },
  egress: {
    key: "egress",
    flag: "egress",
    env: "TUNNAT_EGRESS",
    list: true,
    live: true,
    noun: "egress rule",
    fromFile: egressRuleText,
    kind: EGRESS_RULE,
    to: "nat",
    describe:
      'egress rule, first match decides (repeatable): "allow|deny [to=PREFIX] [from=PREFIX] [proto=tcp|udp|icmp|any] [ports=LO-HI] [answer=icmp|rst|silent]"; reloaded on SIGHUP',
  },
  forwards: {
    key: "forwards",
    flag: "forward",
    env: "TUNNAT_FORWARD",
    list: true,
    noun: "forward",
    kind: FORWARD,
    to: "nat",
    describe:
      "static port forward, the only inbound (repeatable), e.g. tcp:443=10.0.1.10:8443; its port is never given to a dynamic mapping",
  },
  logDestinations: {
    key: "logDestinations",
    flag: "log-destinations",
    env: "TUNNAT_LOG_DESTINATIONS",
    def: "false",
    kind: BOOL,
    to: "control",
    describe: "include destinations in the mapping log (off by default, RFC 6888 REQ-12)",
  },
  metricsLegacyNames: {
    key: "metricsLegacyNames",
    flag: "metrics-legacy-names",
    env: "TUNNAT_METRICS_LEGACY_NAMES",
    def: "false",
    kind: BOOL,
    to: "control",
    describe:
      "also export the metric names of before the unit-suffix renaming (tunnat_bytes_in_from_source_total …), for one release; see docs/observability.md",
  },
} as const satisfies Record<string, Field>;

type FieldName = keyof typeof FIELDS;
type FieldOf<K extends FieldName> = (typeof FIELDS)[K];
type KindValue<K extends FieldName> = FieldOf<K>["kind"] extends Kind<infer T> ? T : never;

/**
 * Each setting's value after the merge: a list for list fields, never undefined when the field
 * has a default.
 */
type Settings = {
  -readonly [K in FieldName]: FieldOf<K> extends { list: true }
    ? KindValue<K>[]
    : FieldOf<K> extends { def: string }
      ? KindValue<K>
      : KindValue<K> | undefined;
};

type FieldsTo<P> = { [K in FieldName]: FieldOf<K> extends { to: P } ? K : never }[FieldName];

/** What the daemon needs besides the core's NatConfig. */
export type ControlSettings = Pick<Settings, FieldsTo<"control">> & {
  /** The config file read, if any (SIGHUP re-reads it). */
  configFile: string | undefined;
  /** Group (gid) allowed to use the control socket (mode 0660); undefined = owner only (0600). */
  controlSocketGroup: number | undefined;
  /** The plumbing's undo journal: survives a crash so the next start removes the leftovers. */
  stateFile: string;
  /** The flow table's state file (control/table-state.ts); null = not saved, not restored. */
  tableStateFile: string | null;
  offloads: boolean;
  /** --ports as given (null = its default), and where: shared-address mode checks it. */
  portsGiven: [number, number] | null;
  portsWhere: string;
};

export interface TunnatConfig {
  nat: NatConfig;
  control: ControlSettings;
  /** Every setting's effective value (defaults, presets and derived defaults applied). */
  settings: Settings;
}

/** The fields of the schema with their names, in order (typed, unlike Object.entries). */
const FIELD_NAMES = Object.keys(FIELDS) as FieldName[];
const field = (name: FieldName): Field => FIELDS[name];

/** The --config flag is not a setting itself; it says where the file is. */
const CONFIG_FLAG = { flag: "config", env: "TUNNAT_CONFIG" } as const;

/**
 * The settings as command-line flags, for the CLI to declare. Every one is a string, booleans
 * too, so that the schema parses the value and a bad one is named (yargs' own booleans would read
 * --manage-routes=maybe as false); a bare boolean flag needs no value.
 */
export function settingFlags(): {
  flag: string;
  describe: string;
  requiresArg: boolean;
  key: string;
  expect: string;
}[] {
  return FIELD_NAMES.map((name) => {
    const f = field(name);
    return {
      key: f.key,
      expect: f.kind.expect,
      flag: f.flag,
      describe: `${f.describe} [env ${f.env}]${f.def !== undefined ? ` (default ${f.def})` : ""}`,
      requiresArg: f.kind !== BOOL,
    };
  });
}

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
function toTexts(v: unknown, list: boolean): string[] | null {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v)) {
    if (!list && v.length > 1) return v.map((x) => String(x)).slice(-1); // last wins
    const out: string[] = [];
    for (const x of v) {
      const t = toTexts(x, list);
      if (t === null) return null;
      out.push(...t);
    }
    return out;
  }
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return [String(v)];
  return null;
}

/** A list's file entries: strings, or what fromFile makes of other shapes (null = bad shape). */
function listTexts(v: unknown, fromFile: (v: unknown) => string | null): string[] | null {
  const out: string[] = [];
  for (const x of Array.isArray(v) ? v : [v]) {
    const t = typeof x === "string" ? x : fromFile(x);
    if (t === null) return null;
    out.push(t);
  }
  return out;
}

function splitList(texts: string[], list: boolean): string[] {
  if (!list) return texts;
  const out: string[] = [];
  for (const t of texts)
    for (const part of t.split(",")) if (part.trim() !== "") out.push(part.trim());
  return out;
}

/** Read and flatten the JSON config file into field key -> value. */
function readConfigFile(path: string, readFile: (p: string) => string): Map<string, unknown> {
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
  if (!isObject(doc))
    throw new TunnatError(ErrorCode.ConfigFile, `config file ${path} must hold a JSON object`);
  const known = new Set<string>(FIELD_NAMES.map((n) => field(n).key));
  const out = new Map<string, unknown>();
  const walk = (obj: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix + k;
      if (key === "timeouts" && isObject(v)) {
        walk(v, "timeouts.");
        continue;
      }
      if (!known.has(key))
        throw new TunnatError(
          ErrorCode.Config,
          `unknown setting "${key}" in ${path}; known settings: ${[...known].join(", ")}`,
        );
      out.set(key, v);
    }
  };
  walk(doc, "");
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

interface Resolved {
  values: Settings;
  /** Where each set value came from, for cross-field error messages. */
  origin: { [K in FieldName]?: { where: string; text: string; source: Source } };
  configFile: string | undefined;
}

/** The highest layer that sets field `f`, as texts, or null. */
function rawInput(
  f: Field,
  flags: Record<string, unknown>,
  env: Record<string, string | undefined>,
  file: Map<string, unknown>,
  configFile: string | undefined,
): Raw | null {
  const list = f.list === true;
  // Repeatable fields are not merged across layers: the highest layer that sets one wins.
  const flagVal = flags[f.flag];
  if (flagVal !== undefined) {
    // A bare boolean flag (`--set-ip-forward`) arrives as "" and means true.
    const where = `--${f.flag}`;
    if (f.kind === BOOL && flagVal === "") return { texts: ["true"], source: "flag", where };
    const texts = toTexts(flagVal, list);
    if (texts === null) throw configError(where, flagVal, `expected ${f.kind.expect}`);
    return { texts: splitList(texts, list), source: "flag", where };
  }
  const envVal = env[f.env];
  if (envVal !== undefined)
    return { texts: splitList([envVal], list), source: "env", where: f.env };
  if (file.has(f.key)) {
    const v = file.get(f.key);
    const fromFile = f.fromFile;
    const texts = fromFile ? listTexts(v, fromFile) : toTexts(v, list);
    const where = `"${f.key}" in ${configFile}`;
    if (texts === null) throw configError(where, v, `expected ${f.kind.expect}`);
    return { texts: splitList(texts, list), source: "file", where };
  }
  if (f.def !== undefined)
    return { texts: [f.def], source: "default", where: `default of --${f.flag}` };
  return null;
}

/** Merge and parse every field; cross-field rules are applied by loadConfig. */
export function resolveSettings(input: LoadInput): Resolved {
  const flags = input.flags ?? {};
  const env = input.env ?? {};
  const readFile = input.readFile ?? ((p: string) => readFileSync(p, "utf8"));

  const cfgTexts = toTexts(flags[CONFIG_FLAG.flag], false);
  let configFile: string | undefined;
  if (cfgTexts && cfgTexts.length > 0) configFile = cfgTexts[cfgTexts.length - 1];
  else if (env[CONFIG_FLAG.env] !== undefined && env[CONFIG_FLAG.env] !== "")
    configFile = env[CONFIG_FLAG.env];
  const file = configFile !== undefined ? readConfigFile(configFile, readFile) : new Map();

  // Filled field by field below; the schema's types hold for each value parsed by its own kind.
  const values: Record<string, unknown> = {};
  const origin: Resolved["origin"] = {};
  for (const name of FIELD_NAMES) {
    const f = field(name);
    const raw = rawInput(f, flags, env, file, configFile);
    if (raw === null) continue;
    if (f.list !== true && raw.texts.length === 0) raw.texts = [""];
    const parsed: unknown[] = [];
    for (const [i, text] of raw.texts.entries()) {
      const p: unknown = f.kind.parse(text);
      if (p instanceof Bad)
        throw configError(raw.where, text, f.noun ? `${f.noun} ${i + 1}, ${p.why}` : p.why);
      parsed.push(p);
    }
    values[name] = f.list === true ? parsed : parsed[parsed.length - 1];
    origin[name] = { where: raw.where, text: raw.texts.join(","), source: raw.source };
  }
  return { values: values as Settings, origin, configFile };
}

/** The settings whose schema entry says `to: P`, as they are. */
function settingsTo<P extends "nat" | "control">(
  s: Settings,
  part: P,
): Pick<Settings, FieldsTo<P>> {
  const out: Partial<Settings> = {};
  const copy = <K extends FieldName>(k: K) => {
    out[k] = s[k];
  };
  for (const name of FIELD_NAMES) if (field(name).to === part) copy(name);
  return out as Pick<Settings, FieldsTo<P>>;
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
    const n = `forward ${i + 1}, `;
    if (!inside.some((p) => cidrContains(p, fw.inside)))
      throw configError(
        where,
        fw.text,
        `${n}field "inside address": ${formatIpv4(fw.inside)} is in no --inside prefix (${inside.map(formatCidr).join(", ")})`,
      );
    if (fw.natAddress !== null && !natAddresses.includes(fw.natAddress))
      throw configError(
        where,
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
          where,
          fw.text,
          `${n}field "port": forward ${j + 1} (${o.text}) already uses it`,
        );
    }
  });
}

/** Load, merge and validate everything; throws TunnatError(TUNNAT_ERR_CONFIG) naming the field. */
export function loadConfig(input: LoadInput): TunnatConfig {
  const { values, origin, configFile } = resolveSettings(input);
  const v: Settings = { ...values };
  const flagHint = (name: FieldName) => {
    const f = field(name);
    return `--${f.flag}, ${f.env} or "${f.key}" in the config file`;
  };
  const inside = v.inside ?? [];
  const natAddresses = v.natAddress ?? [];
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
  inside.forEach((a, i) => {
    for (const b of inside.slice(i + 1))
      if (cidrOverlaps(a, b))
        throw configError(
          origin.inside?.where ?? "--inside",
          formatCidr(b),
          `overlaps ${formatCidr(a)}; list each inside prefix once`,
        );
  });

  validateForwards(v.forwards ?? [], inside, natAddresses, origin.forwards?.where ?? "--forward");

  const aws = v.preset === "aws";
  const timeouts: Timeouts = { ...(aws ? AWS_TIMEOUTS : DEFAULT_TIMEOUTS) };
  // The RFC minimums come from the protocol table (base/protocols.ts).
  for (const rule of TIMEOUT_SPECS) {
    const k = rule.key;
    const given = v[k];
    if (given !== undefined) {
      if (!aws && given < rule.min)
        throw configError(
          origin[k]?.where ?? `--${FIELDS[k].flag}`,
          origin[k]?.text ?? String(given),
          `${rule.why}; use --preset aws to accept the AWS NAT Gateway's shorter idle timeouts`,
        );
      timeouts[k] = given;
    }
    v[k] = timeouts[k];
  }

  if (v.manageRoutes && v.insideInterface === undefined)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --inside-interface: route management needs the interface inside traffic arrives on (${flagHint("insideInterface")}), or use --no-manage-routes`,
    );
  if (v.manageRoutes && v.outsideInterface === undefined)
    throw new TunnatError(
      ErrorCode.Config,
      `missing --outside-interface: route management needs the interface facing the internet (${flagHint("outsideInterface")}), or use --no-manage-routes`,
    );

  if (v.offloads === true && !v.vnetHdr)
    throw configError(
      origin.offloads?.where ?? "--offloads",
      origin.offloads?.text ?? "true",
      "offloads need the virtio_net_hdr: drop --no-vnet-hdr or turn offloads off",
    );
  const offloads = v.offloads ?? v.vnetHdr;
  v.offloads = offloads;
  const portsGiven: [number, number] | null =
    origin.ports?.source === "default" || origin.ports === undefined ? null : v.ports;
  // The aws preset narrows the default range to the NACL ephemeral ports; a given --ports wins.
  if (aws && origin.ports?.source === "default") v.ports = [AWS_PORTS[0], AWS_PORTS[1]];

  let controlSocketGroup: number | undefined;
  if (v.controlSocketGroup !== undefined) {
    controlSocketGroup = resolveGroup(
      v.controlSocketGroup,
      input.readFile ?? ((p: string) => readFileSync(p, "utf8")),
    );
    if (controlSocketGroup === undefined)
      throw configError(
        origin.controlSocketGroup?.where ?? "--control-socket-group",
        v.controlSocketGroup,
        "no such group in /etc/group; create it (systemd-sysusers) or give its number",
      );
  }
  // systemd's StateDirectory= survives restarts (RuntimeDirectory= is emptied when the service
  // stops, crashes included, which would lose the journal exactly when it is needed).
  const stateDirectory = (input.env?.STATE_DIRECTORY ?? "").split(":")[0] ?? "";
  const stateFile =
    v.stateFile ??
    (stateDirectory.startsWith("/")
      ? `${stateDirectory}/plumbing.json`
      : `${v.controlSocket}.plumbing.json`);
  v.stateFile = stateFile;
  const tableStateFile =
    v.tableStateFile !== undefined
      ? v.tableStateFile
      : stateDirectory.startsWith("/")
        ? `${stateDirectory}/table.state`
        : `${v.controlSocket}.table.state`;
  v.tableStateFile = tableStateFile;

  const nat = defaultNatConfig({
    ...settingsTo(v, "nat"),
    natAddresses,
    inside,
    // Lists nobody gave are absent from the settings: none.
    egress: v.egress ?? [],
    forwards: v.forwards ?? [],
    portLo: v.ports[0],
    portHi: v.ports[1],
    timeouts,
    rstOnExpired: aws,
  });
  const control: ControlSettings = {
    ...settingsTo(v, "control"),
    configFile,
    controlSocketGroup,
    stateFile,
    tableStateFile,
    offloads,
    portsGiven,
    portsWhere: origin.ports?.where ?? "--ports",
  };
  return { nat, control, settings: v };
}

/** One setting a reload saw change: its config-file key and the old and new values as shown. */
export interface SettingChange {
  field: string;
  old: string;
  new: string;
}

/** A setting's effective value as text (the reload report's old and new values). */
function settingText(c: TunnatConfig, name: FieldName): string {
  const f = field(name);
  const value: unknown = c.settings[name];
  if (value === undefined) return "none";
  const text = (x: unknown) => f.kind.format(x);
  return Array.isArray(value) && f.list === true ? value.map(text).join(",") : text(value);
}

/**
 * Every setting a user can give, by its config-file key, as the text a reload report shows.
 * `live` ones take effect on SIGHUP; the others need a restart. Derived from FIELDS; a test
 * checks that every field is covered.
 */
export const RELOADABLE_SETTINGS: readonly [string, boolean, (c: TunnatConfig) => string][] =
  FIELD_NAMES.map((name) => {
    const f = field(name);
    return [f.key, f.live === true, (c: TunnatConfig) => settingText(c, name)];
  });

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
  // By key, so the report reads the same whatever order the schema lists the fields in.
  const byField = (x: SettingChange, y: SettingChange) => (x.field < y.field ? -1 : 1);
  return { applied: applied.sort(byField), needRestart: needRestart.sort(byField) };
}

/**
 * A JSON view of the effective settings (`tunnat check --json`), every field under its config-file
 * key (timeouts nested as in the file), plus the config file read and what the preset implies.
 */
export function describeConfig(c: TunnatConfig): Record<string, Shown> {
  const out: Record<string, Shown> = {};
  const nested: Record<string, Record<string, Shown>> = {};
  for (const name of FIELD_NAMES) {
    const f = field(name);
    const value: unknown = c.settings[name];
    const { kind } = f;
    // A number or boolean written as itself stays one (an address, written dotted, does not).
    const one = (x: unknown): Shown => {
      if (kind.json) return kind.json(x);
      const text = kind.format(x);
      return (typeof x === "number" || typeof x === "boolean") && text === String(x) ? x : text;
    };
    const shown =
      value === undefined
        ? null
        : Array.isArray(value) && f.list === true
          ? value.map(one)
          : one(value);
    // "timeouts.udp" is shown as { timeouts: { udp } }, as the config file nests it.
    const dot = f.key.indexOf(".");
    if (dot < 0) out[f.key] = shown;
    else {
      const group = nested[f.key.slice(0, dot)] ?? {};
      group[f.key.slice(dot + 1)] = shown;
      nested[f.key.slice(0, dot)] = group;
    }
  }
  for (const [k, group] of Object.entries(nested)) out[k] = group;
  out.configFile = c.control.configFile ?? null;
  out.rstOnExpired = c.nat.rstOnExpired;
  return out;
}
