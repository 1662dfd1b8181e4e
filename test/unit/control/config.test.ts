import t from "tap";
import yargs from "yargs";
import { ErrorCode, exitCodeFor, TunnatError } from "../../../src/base/errors.js";
import {
  autoQueues,
  describeConfig,
  FIELDS,
  type LoadInput,
  loadConfig,
  RELOADABLE_SETTINGS,
  reloadChanges,
  settingFlags,
} from "../../../src/control/config.js";
import { parseIpv4 } from "../../../src/wire/addr.js";

const BASE = {
  inside: "10.0.0.0/16",
  "nat-address": "198.51.100.7",
  "inside-interface": "eth1",
  "outside-interface": "eth0",
};

function load(flags: Record<string, unknown>, extra: Partial<LoadInput> = {}) {
  return loadConfig({ flags: { ...BASE, ...flags }, env: {}, ...extra });
}

/** The TunnatError a config throws (fails the test when nothing is thrown). */
function errorOf(fn: () => unknown): TunnatError {
  try {
    fn();
  } catch (e) {
    if (e instanceof TunnatError) return e;
    throw e;
  }
  throw new Error("expected a TunnatError");
}

t.test("defaults fill every field the user does not set", async (t) => {
  const c = load({});
  t.same(c.nat.inside, [{ addr: parseIpv4("10.0.0.0"), len: 16 }]);
  t.same(c.nat.natAddresses, [parseIpv4("198.51.100.7")]);
  t.equal(c.control.tun, "tunnat0");
  t.same(c.control.metrics, { host: "127.0.0.1", port: 9469 });
  t.equal(c.nat.maxFlows, 262_144);
  t.equal(c.nat.portLo, 1);
  t.equal(c.nat.portHi, 65535);
  t.equal(c.nat.mapping, "endpoint-independent");
  t.equal(c.nat.filtering, "address-and-port-dependent");
  t.same(c.nat.timeouts, { tcpEstablished: 7440, tcpTransitory: 240, udp: 300, icmp: 60 });
  t.equal(c.nat.rstOnExpired, false);
  t.equal(c.control.manageRoutes, true);
  t.equal(c.nat.vnetHdr, true);
  t.equal(c.control.offloads, true);
  t.equal(c.control.controlSocket, "/run/tunnat/tunnat.sock");
  t.same(c.control.mappingLog, { kind: "off" });
  t.equal(c.nat.icmpAdminProhibited, true, "3/13 on refusal by default (RFC 5508 REQ-8)");
  t.equal(c.control.topHosts, 20);
  t.equal(load({ "icmp-prohibited": false }).nat.icmpAdminProhibited, false, "and can be silenced");
  t.equal(c.control.logDestinations, false);
  t.equal(c.control.metricsLegacyNames, false, "legacy metric names are off by default");
  t.equal(c.control.logLevel, "info");
  t.equal(c.control.routeTable, 4242);
});

t.test("a config file is overridden by TUNNAT_* env, which is overridden by flags", async (t) => {
  const file = JSON.stringify({
    maxFlows: 2048,
    udp: undefined,
    timeouts: { udp: 600, icmp: 90 },
    logLevel: "warn",
    mapping: "per-destination",
  });
  const readFile = (p: string) => {
    t.equal(p, "/etc/tunnat/config.json");
    return file;
  };
  const fileOnly = load({ config: "/etc/tunnat/config.json" }, { readFile });
  t.equal(fileOnly.nat.maxFlows, 2048);
  t.equal(fileOnly.nat.timeouts.udp, 600);
  t.equal(fileOnly.nat.timeouts.icmp, 90);
  t.equal(fileOnly.nat.mapping, "per-destination");
  const env = {
    TUNNAT_MAX_FLOWS: "4096",
    TUNNAT_UDP_TIMEOUT: "700",
    TUNNAT_CONFIG: "/etc/tunnat/config.json",
  };
  const withEnv = loadConfig({ flags: BASE, env, readFile });
  t.equal(withEnv.nat.maxFlows, 4096, "env beats file");
  t.equal(withEnv.nat.timeouts.udp, 700);
  t.equal(withEnv.control.logLevel, "warn", "file still applies where env is silent");
  const withFlags = loadConfig({ flags: { ...BASE, "max-flows": "8192" }, env, readFile });
  t.equal(withFlags.nat.maxFlows, 8192, "flag beats env");
  t.equal(withFlags.nat.timeouts.udp, 700);
});

t.test("the whole required set can come from the environment, lists comma-separated", async (t) => {
  const c = loadConfig({
    flags: {},
    env: {
      TUNNAT_INSIDE: "10.0.0.0/16,10.1.0.0/16",
      TUNNAT_NAT_ADDRESS: "198.51.100.7, 198.51.100.8",
      TUNNAT_INSIDE_INTERFACE: "eth1",
      TUNNAT_OUTSIDE_INTERFACE: "eth0",
      TUNNAT_MANAGE_ROUTES: "yes",
    },
  });
  t.equal(c.nat.inside.length, 2);
  t.same(c.nat.natAddresses, [parseIpv4("198.51.100.7"), parseIpv4("198.51.100.8")]);
});

t.test("repeated flags give several prefixes and NAT addresses", async (t) => {
  const c = load({
    inside: ["10.0.0.0/16", "192.168.0.0/24"],
    "nat-address": ["198.51.100.7", "198.51.100.9"],
  });
  t.equal(c.nat.inside.length, 2);
  t.equal(c.nat.natAddresses.length, 2);
});

t.test("every field's error names the field and the bad value", async (t) => {
  const bad: [string, string, RegExp][] = [
    ["inside", "10.0.0.0/33", /expected an IPv4 prefix/],
    ["inside-interface", "a/b", /interface name/],
    ["nat-address", "198.51.100", /expected an IPv4 address/],
    ["outside-interface", "this-name-is-too-long", /interface name/],
    ["tun", "", /interface name/],
    ["tun-address", "1.2.3/8", /ADDR|address/],
    ["metrics", "127.0.0.1", /HOST:PORT/],
    ["max-flows", "abc", /expected an integer 1024\.\.16777216/],
    ["ports", "2000-1000", /LO-HI|range/],
    ["mapping", "symmetric", /endpoint-independent, per-destination/],
    ["filtering", "open", /address-and-port-dependent/],
    ["tcp-established-timeout", "long", /duration/],
    ["tcp-transitory-timeout", "-1", /duration/],
    ["udp-timeout", "5x", /duration/],
    ["icmp-timeout", "0", /duration/],
    ["preset", "gcp", /default, aws/],
    ["per-host-quota", "-3", /integer/],
    ["log-level", "loud", /info/],
    ["manage-routes", "maybe", /true or false/],
    ["route-table", "254", /table id/],
    ["rule-priority", "0", /1\.\.32765/],
    ["set-ip-forward", "perhaps", /true or false/],
    ["vnet-hdr", "2", /true or false/],
    ["offloads", "x", /true or false/],
    ["restore-ttl", "x", /true or false/],
    ["icmp-prohibited", "maybe", /true or false/],
    ["control-socket", "relative.sock", /absolute path/],
    ["control-socket-group", "no such:group", /group name or number/],
    ["state-file", "plumbing.json", /absolute path/],
    ["table-state-file", "table.state", /absolute path or "none"|absolute path/],
    ["checkpoint-interval", "soon", /duration/],
    ["mapping-log", "", /off|stdout/],
    ["ha", "ha.json", /absolute path/],
    ["log-destinations", "x", /true or false/],
    ["metrics-legacy-names", "maybe", /true or false/],
    ["top-hosts", "5000", /0\.\.1000/],
    ["queues", "0", /integer 1\.\.256/],
    ["poll-us", "fast", /0\.\.10000/],
    ["internal-address", "127.0.0.2", /loopback/],
    ["egress", "deny proto=sctp", /egress rule 1, field "proto"/],
    ["forward", "tcp:443", /forward 1, field "forward"/],
    ["tun-queue-length", "0", /1\.\.1000000/],
  ];
  const covered = new Set(bad.map((b) => b[0]));
  for (const f of Object.values(FIELDS)) t.ok(covered.has(f.flag), `--${f.flag} has an error case`);
  for (const [flag, value, why] of bad) {
    const e = errorOf(() => load({ [flag]: value }));
    t.equal(e.code, ErrorCode.Config, flag);
    t.ok(e.message.startsWith(`invalid --${flag} ${JSON.stringify(value)}: `), e.message);
    t.match(e.message, why, flag);
  }
});

t.test(
  "--queues: auto is one per CPU this process may use, 1 on 2 CPUs or fewer; a number is taken as given",
  async (t) => {
    const { availableParallelism } = await import("node:os");
    const cpus = availableParallelism();
    t.equal(load({}).control.queues, cpus <= 2 ? 1 : Math.min(256, cpus), "default auto");
    t.same([1, 2, 3, 8, 300].map(autoQueues), [1, 1, 3, 8, 256], "auto by CPU count");
    t.equal(load({ queues: "1" }).control.queues, 1);
    t.equal(load({ queues: "4" }).control.queues, 4);
    t.equal(errorOf(() => load({ queues: "257" })).code, ErrorCode.Config);
    t.equal(load({}).control.pollUs, 0, "--poll-us defaults to 0 (no spinning)");
    t.equal(load({ "poll-us": "50" }).control.pollUs, 50);
  },
);

t.test(
  "--tun-queue-length: unset leaves the kernel's, a value is kept, too large exits 2",
  async (t) => {
    t.equal(load({}).control.tunQueueLength, undefined, "default: the kernel's queue length");
    t.equal(load({ "tun-queue-length": "16" }).control.tunQueueLength, 16);
    t.equal(
      loadConfig({ flags: BASE, env: { TUNNAT_TUN_QUEUE_LENGTH: "4096" } }).control.tunQueueLength,
      4096,
      "from the environment",
    );
    const e = errorOf(() => load({ "tun-queue-length": "1000001" }));
    t.equal(e.code, ErrorCode.Config);
    t.equal(exitCodeFor(e.code), 2, "exits 2");
    t.match(e.message, /--tun-queue-length "1000001"/);
    const r = reloadChanges(load({}), load({ "tun-queue-length": "64" }));
    t.same(
      r.needRestart.map((c) => c.field),
      ["tunQueueLength"],
      "a changed queue length needs a restart",
    );
  },
);

t.test(
  "the plumbing state file: $STATE_DIRECTORY under systemd, else next to the socket",
  async (t) => {
    t.equal(load({}).control.stateFile, "/run/tunnat/tunnat.sock.plumbing.json");
    const sd = loadConfig({ flags: BASE, env: { STATE_DIRECTORY: "/var/lib/tunnat:/var/lib/x" } });
    t.equal(sd.control.stateFile, "/var/lib/tunnat/plumbing.json", "the first StateDirectory=");
    const given = loadConfig({
      flags: { ...BASE, "state-file": "/srv/p.json" },
      env: { STATE_DIRECTORY: "/var/lib/tunnat" },
    });
    t.equal(given.control.stateFile, "/srv/p.json", "an explicit --state-file wins");
  },
);

t.test("the table state file sits beside the plumbing journal; none turns it off", async (t) => {
  t.equal(load({}).control.tableStateFile, "/run/tunnat/tunnat.sock.table.state");
  t.equal(load({}).control.checkpointInterval, 30, "a checkpoint every 30 s by default");
  const sd = loadConfig({ flags: BASE, env: { STATE_DIRECTORY: "/var/lib/tunnat" } });
  t.equal(sd.control.tableStateFile, "/var/lib/tunnat/table.state");
  t.equal(load({ "table-state-file": "none" }).control.tableStateFile, null);
  t.equal(load({ "checkpoint-interval": "0" }).control.checkpointInterval, 0, "0 = at stop only");
  t.equal(load({ "checkpoint-interval": "2m" }).control.checkpointInterval, 120);
});

t.test("the control socket group is resolved to a gid, or the start is refused", async (t) => {
  const group = "root:x:0:\ntunnat:x:997:\n";
  const readFile = (p: string) => {
    if (p === "/etc/group") return group;
    throw new Error(`unexpected read ${p}`);
  };
  t.equal(load({}).control.controlSocketGroup, undefined, "owner only by default");
  t.equal(load({ "control-socket-group": "tunnat" }, { readFile }).control.controlSocketGroup, 997);
  t.equal(load({ "control-socket-group": "1234" }, { readFile }).control.controlSocketGroup, 1234);
  const e = errorOf(() => load({ "control-socket-group": "nobody-here" }, { readFile }));
  t.equal(e.code, ErrorCode.Config);
  t.match(e.message, /^invalid --control-socket-group "nobody-here": no such group/);
});

t.test(
  "errors name the environment variable or the config file key where the value came from",
  async (t) => {
    const e1 = errorOf(() => loadConfig({ flags: BASE, env: { TUNNAT_MAX_FLOWS: "12" } }));
    t.equal(e1.message, 'invalid TUNNAT_MAX_FLOWS "12": expected an integer 1024..16777216');
    const e2 = errorOf(() =>
      load(
        { config: "/c.json" },
        { readFile: () => JSON.stringify({ timeouts: { udp: "soon" } }) },
      ),
    );
    t.match(e2.message, /^invalid "timeouts\.udp" in \/c\.json "soon": expected a duration/);
    const e3 = errorOf(() => load({ config: "/c.json" }, { readFile: () => '{"maxflow": 3}' }));
    t.match(e3.message, /unknown setting "maxflow" in \/c\.json/);
    const e4 = errorOf(() => load({ config: "/c.json" }, { readFile: () => "{nope" }));
    t.equal(e4.code, ErrorCode.ConfigFile);
    const e5 = errorOf(() =>
      load(
        { config: "/missing.json" },
        {
          readFile: () => {
            throw Object.assign(new Error("x"), { code: "ENOENT" });
          },
        },
      ),
    );
    t.match(e5.message, /cannot read config file \/missing\.json: ENOENT/);
  },
);

t.test(
  "timeouts below the RFC minimums are refused, with the reason, unless the aws preset",
  async (t) => {
    const cases: [string, string, RegExp][] = [
      ["tcp-established-timeout", "7439", /RFC 5382 REQ-5.*7440/],
      ["tcp-transitory-timeout", "239", /240/],
      ["udp-timeout", "119", /RFC 4787 REQ-5.*120/],
      ["icmp-timeout", "59", /RFC 5508 REQ-2.*60/],
    ];
    for (const [flag, v, why] of cases) {
      const e = errorOf(() => load({ [flag]: v }));
      t.match(e.message, new RegExp(`^invalid --${flag} "${v}": `));
      t.match(e.message, why);
      t.match(e.message, /--preset aws/);
      t.doesNotThrow(() => load({ [flag]: v, preset: "aws" }), `${flag} ${v} with aws`);
    }
    t.equal(load({ "udp-timeout": "2m" }).nat.timeouts.udp, 120, "suffixes are read");
    t.equal(load({ "tcp-established-timeout": "3h" }).nat.timeouts.tcpEstablished, 10800);
  },
);

t.test(
  "the aws preset uses ports 1024-65535 (the NACL ephemeral range); --ports still wins",
  async (t) => {
    const c = load({ preset: "aws" });
    t.equal(c.nat.portLo, 1024);
    t.equal(c.nat.portHi, 65535);
    const given = load({ preset: "aws", ports: "20000-30000" });
    t.same([given.nat.portLo, given.nat.portHi], [20000, 30000]);
    const env = loadConfig({ flags: { ...BASE, preset: "aws" }, env: { TUNNAT_PORTS: "1-65535" } });
    t.same([env.nat.portLo, env.nat.portHi], [1, 65535], "an explicit full range is kept");
  },
);

t.test("the aws preset sets 350 s everywhere and an RST on expiry", async (t) => {
  const c = load({ preset: "aws" });
  t.same(c.nat.timeouts, { tcpEstablished: 350, tcpTransitory: 350, udp: 350, icmp: 350 });
  t.equal(c.nat.rstOnExpired, true);
  t.equal(load({ preset: "aws", "udp-timeout": "60" }).nat.timeouts.udp, 60);
});

t.test("a NAT address inside an inside prefix is refused (RFC 4787 REQ-7)", async (t) => {
  const e = errorOf(() => load({ "nat-address": "10.0.3.3" }));
  t.equal(e.code, ErrorCode.Config);
  t.match(
    e.message,
    /^invalid --nat-address "10\.0\.3\.3": lies inside the inside prefix 10\.0\.0\.0\/16/,
  );
  t.match(e.message, /REQ-7/);
  const e2 = errorOf(() => load({ inside: ["10.0.0.0/16", "10.0.128.0/17"] }));
  t.match(e2.message, /overlaps 10\.0\.0\.0\/16/);
});

t.test("missing required settings and contradictions are named", async (t) => {
  t.match(errorOf(() => loadConfig({ flags: {}, env: {} })).message, /^missing --inside/);
  t.match(errorOf(() => load({ "nat-address": undefined })).message, /^missing --nat-address/);
  t.match(
    errorOf(() => load({ "inside-interface": undefined })).message,
    /missing --inside-interface.*--no-manage-routes/,
  );
  t.doesNotThrow(() =>
    load({ "inside-interface": undefined, "outside-interface": undefined, "manage-routes": false }),
  );
  t.match(
    errorOf(() => load({ inside: "10.0.1.5/24" })).message,
    /host bits are set; did you mean 10\.0\.1\.0\/24/,
  );
  t.match(errorOf(() => load({ "nat-address": "127.0.0.1" })).message, /loopback/);
  t.match(
    errorOf(() => load({ "nat-address": ["198.51.100.7", "198.51.100.7"] })).message,
    /listed twice/,
  );
  t.match(
    errorOf(() => load({ "vnet-hdr": false, offloads: true })).message,
    /^invalid --offloads/,
  );
  t.equal(
    load({ "vnet-hdr": false }).control.offloads,
    false,
    "offloads follow vnet-hdr by default",
  );
});

t.test("ports, metrics and mapping log values are parsed into their shapes", async (t) => {
  const c = load({
    ports: "1024-65535",
    metrics: "[::1]:9000",
    "mapping-log": "/var/log/tunnat/map.jsonl",
  });
  t.equal(c.nat.portLo, 1024);
  t.equal(c.nat.portHi, 65535);
  t.same(c.control.metrics, { host: "::1", port: 9000 });
  t.same(c.control.mappingLog, { kind: "file", path: "/var/log/tunnat/map.jsonl" });
  t.same(load({ "mapping-log": "stdout" }).control.mappingLog, { kind: "stdout" });
  t.equal(load({ "tun-address": "none" }).control.tunAddress, null);
});

t.test("a reload names each changed setting with its old and new value", async (t) => {
  const cur = load({});
  const next = load({
    mapping: "per-destination",
    "max-flows": "4096",
    "udp-timeout": "600",
    "log-level": "debug",
    "top-hosts": "5",
  });
  const { applied, needRestart } = reloadChanges(cur, next);
  t.same(needRestart, [
    { field: "mapping", old: "endpoint-independent", new: "per-destination" },
    { field: "maxFlows", old: "262144", new: "4096" },
    { field: "topHosts", old: "20", new: "5" },
  ]);
  t.same(applied, [
    { field: "logLevel", old: "info", new: "debug" },
    { field: "timeouts.udp", old: "300", new: "600" },
  ]);
  t.same(reloadChanges(cur, load({})), { applied: [], needRestart: [] }, "nothing changed");
  const aws = reloadChanges(cur, load({ preset: "aws" }));
  t.same(
    aws.needRestart.map((c) => c.field),
    ["ports", "preset"],
    "a preset change is named once, with the port range it implies (both need a restart)",
  );
});

t.test("every setting a user can give is covered by the reload report", async (t) => {
  const covered = new Set(RELOADABLE_SETTINGS.map(([field]) => field));
  // --config names the file itself; it is what SIGHUP re-reads, not a setting in it.
  const notSettings = new Set(["config"]);
  for (const f of Object.values(FIELDS))
    if (!notSettings.has(f.key)) t.ok(covered.has(f.key), `${f.key} is reported on reload`);
});

/** Flags parsed the way the CLI parses them: yargs with the options the schema declares. */
function argv(args: string[]): Record<string, unknown> {
  let y = yargs(args).strict();
  for (const f of settingFlags())
    y = y.option(f.flag, { type: "string", requiresArg: f.requiresArg });
  return y.parseSync() as Record<string, unknown>;
}

t.test("a bad boolean flag is refused naming the field and value, not read as false", async (t) => {
  const base = ["--inside", "10.0.0.0/16", "--nat-address", "198.51.100.7"];
  const ifaces = ["--inside-interface", "eth1", "--outside-interface", "eth0"];
  for (const [arg, flag, value] of [
    ["--manage-routes=maybe", "manage-routes", "maybe"],
    ["--set-ip-forward=yes please", "set-ip-forward", "yes please"],
    ["--restore-ttl=2", "restore-ttl", "2"],
  ] as const) {
    const e = errorOf(() => loadConfig({ flags: argv([...base, ...ifaces, arg]), env: {} }));
    t.equal(e.code, ErrorCode.Config, arg);
    t.equal(e.message, `invalid --${flag} ${JSON.stringify(value)}: expected true or false`);
  }
  const bare = loadConfig({ flags: argv([...base, ...ifaces, "--set-ip-forward"]), env: {} });
  t.equal(bare.control.setIpForward, true, "a bare boolean flag means true");
  const no = loadConfig({ flags: argv([...base, "--no-manage-routes"]), env: {} });
  t.equal(no.control.manageRoutes, false, "--no-manage-routes means false");
  const spelled = loadConfig({ flags: argv([...base, ...ifaces, "--vnet-hdr=off"]), env: {} });
  t.equal(spelled.nat.vnetHdr, false, "a boolean flag takes the values the environment takes");
});

t.test("describeConfig shows every field of the schema under its config-file key", async (t) => {
  const d = describeConfig(load({}));
  for (const f of Object.values(FIELDS)) {
    const [head, tail] = f.key.split(".");
    const group = d[head ?? ""];
    const has =
      tail === undefined
        ? head !== undefined && head in d
        : typeof group === "object" && group !== null && tail in group;
    t.ok(has, `${f.key} is described`);
  }
  t.equal(d.restoreTtl, true);
  t.equal(d.icmpProhibited, true);
  t.same(d.timeouts, { tcpEstablished: 7440, tcpTransitory: 240, udp: 300, icmp: 60 });
  t.same(d.inside, ["10.0.0.0/16"]);
  t.same(d.natAddress, ["198.51.100.7"]);
  t.equal(d.ports, "1-65535");
  t.equal(d.metrics, "127.0.0.1:9469");
  t.equal(d.stateFile, "/run/tunnat/tunnat.sock.plumbing.json", "derived defaults are shown");
  t.equal(d.offloads, true);
  t.equal(d.insideInterface, "eth1");
  t.equal(d.controlSocketGroup, null, "an unset field is null");
  const aws = describeConfig(load({ preset: "aws" }));
  t.equal(aws.ports, "1024-65535", "what the preset implies is shown");
  t.equal(aws.rstOnExpired, true);
});
