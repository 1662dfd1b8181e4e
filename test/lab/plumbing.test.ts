/**
 * Kernel plumbing applied and removed for real, inside namespaces this test creates (never the
 * root namespace). Needs root; skipped with the reason otherwise.
 *
 *   ns "tn-<pid>-gw" (the gateway under test)                ns "tn-<pid>-peer"
 *   ┌──────────────────────────────────────────────┐       ┌──────────────────┐
 *   │ tunnat0 (ip tuntap add mode tun)              │       │                  │
 *   │ in0  10.0.1.1/24  ─────────── veth ───────────┼───────┼── p-in0          │
 *   │ out0 203.0.113.2/24 mtu 1400 ── veth ─────────┼───────┼── p-out0         │
 *   │ eni0 172.31.0.10/20 (single-ENI case) ─ veth ─┼───────┼── p-eni0         │
 *   └──────────────────────────────────────────────┘       └──────────────────┘
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { ErrorCode, TunnatError } from "../../src/control/errors.js";
import { netnsRunner, Plumbing, type PlumbingSpec } from "../../src/control/plumbing.js";
import { parseCidr, parseIpv4 } from "../../src/wire/addr.js";

const GW = `tn-${process.pid}-gw`;
const PEER = `tn-${process.pid}-peer`;

function sh(...args: string[]): string {
  return execFileSync(args[0] ?? "", args.slice(1), {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}
const gw = (...args: string[]) => sh("ip", "-n", GW, ...args);
const sysctl = (key: string) => sh("ip", "netns", "exec", GW, "sysctl", "-n", key).trim();
const setSysctl = (key: string, v: string) =>
  sh("ip", "netns", "exec", GW, "sysctl", "-q", "-w", `${key}=${v}`);

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root (ip netns, tuntap)";
  try {
    sh("ip", "netns", "add", `tn-${process.pid}-probe`);
    sh("ip", "netns", "del", `tn-${process.pid}-probe`);
  } catch (e) {
    return `cannot create network namespaces: ${String(e)}`;
  }
  return null;
}

const reason = skipReason();
if (reason) {
  t.plan(0, reason);
} else {
  const stateDir = mkdtempSync(join(tmpdir(), "tunnat-plumb-"));
  const cleanup = () => {
    for (const n of [GW, PEER]) {
      try {
        sh("ip", "netns", "del", n);
      } catch {
        // not there
      }
    }
    rmSync(stateDir, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  t.teardown(cleanup);

  sh("ip", "netns", "add", GW);
  sh("ip", "netns", "add", PEER);
  gw("link", "set", "lo", "up");
  gw("tuntap", "add", "mode", "tun", "dev", "tunnat0");
  for (const [dev, addr] of [
    ["in0", "10.0.1.1/24"],
    ["out0", "203.0.113.2/24"],
    ["eni0", "172.31.0.10/20"],
  ] as const) {
    gw("link", "add", dev, "type", "veth", "peer", "name", `p-${dev}`, "netns", PEER);
    gw("addr", "add", addr, "dev", dev);
    gw("link", "set", dev, "up");
  }
  gw("link", "set", "out0", "mtu", "1400");
  setSysctl("net.ipv4.ip_forward", "1");

  const cidr = (s: string) => {
    const c = parseCidr(s);
    if (!c) throw new Error(s);
    return { addr: c.addr, len: c.len };
  };
  const spec = (over: Partial<PlumbingSpec> = {}): PlumbingSpec => ({
    tun: "tunnat0",
    tunAddress: { addr: parseIpv4("169.254.77.1"), len: 32 },
    insideInterface: "in0",
    outsideInterface: "out0",
    inside: [cidr("10.0.1.0/24"), cidr("10.0.2.0/24")],
    natAddresses: [parseIpv4("203.0.113.1"), parseIpv4("203.0.113.3")],
    table: 4242,
    priority: 4242,
    setIpForward: false,
    stateFile: join(stateDir, "plumbing.json"),
    ...over,
  });
  const runner = netnsRunner(GW);

  /** Everything tunnat could have left behind, as text. */
  function snapshot() {
    return {
      rules: gw("rule", "show")
        .split("\n")
        .filter((l) => l.includes("4242")),
      // An absent table ("FIB table does not exist") and an empty one both mean nothing is left.
      table: (() => {
        try {
          return gw("route", "show", "table", "4242").trim();
        } catch {
          return "";
        }
      })(),
      main: gw("route", "show")
        .split("\n")
        .filter((l) => l.includes("tunnat0")),
      proxy: gw("neigh", "show", "proxy").trim(),
      tunAddr: gw("-4", "addr", "show", "dev", "tunnat0").includes("169.254.77.1"),
      rp: sysctl("net.ipv4.conf.tunnat0.rp_filter"),
    };
  }
  const clean = snapshot();

  t.test(
    "apply installs address, routes, table, rules, proxy ARP and rp_filter; remove leaves nothing",
    async (t) => {
      const p = new Plumbing(spec(), { runner });
      await p.apply();
      const s = snapshot();
      t.match(s.rules.join("\n"), /4242:\s+from 10\.0\.1\.0\/24 iif in0 lookup 4242/);
      t.match(s.rules.join("\n"), /4242:\s+from 10\.0\.2\.0\/24 iif in0 lookup 4242/);
      t.match(s.table, /default dev tunnat0/);
      t.match(s.table, /throw 10\.0\.1\.0\/24/);
      t.match(s.table, /throw 10\.0\.2\.0\/24/);
      t.match(s.main.join("\n"), /203\.0\.113\.1 dev tunnat0/);
      t.match(s.main.join("\n"), /203\.0\.113\.3 dev tunnat0/);
      t.match(s.proxy, /203\.0\.113\.1 dev out0/);
      t.match(s.proxy, /203\.0\.113\.3 dev out0/);
      t.equal(s.tunAddr, true, "the TUN has its address");
      t.equal(s.rp, "2", "rp_filter on the TUN is loose");
      t.match(gw("link", "show", "dev", "tunnat0"), /mtu 1400/, "the TUN copies the outside MTU");
      t.match(gw("link", "show", "dev", "tunnat0"), /<[^>]*UP[^>]*>/, "the TUN is up");
      const warnings = await p.remove();
      t.same(warnings, []);
      t.same(snapshot(), clean, "nothing is left behind");
      gw("link", "set", "dev", "tunnat0", "down");
    },
  );

  t.test(
    "a step that fails half-way is undone and named in a TUNNAT_ERR_PLUMBING error",
    async (t) => {
      // A route the kernel already has makes the second NAT route fail with "File exists" after
      // the TUN address, rp_filter and the first route were applied.
      gw("route", "add", "203.0.113.3/32", "dev", "lo");
      try {
        const p = new Plumbing(spec(), { runner });
        const err = await p.apply().then(
          () => null,
          (e: unknown) => e,
        );
        t.ok(err instanceof TunnatError);
        t.equal((err as TunnatError).code, ErrorCode.Plumbing);
        t.match((err as Error).message, /ip -n \S+ route add 203\.0\.113\.3\/32 dev tunnat0/);
        t.match((err as Error).message, /File exists/);
        t.same(snapshot(), clean, "everything applied before the failure was removed");
      } finally {
        gw("route", "del", "203.0.113.3/32", "dev", "lo");
      }
    },
  );

  t.test("a nonexistent outside interface fails without changing anything", async (t) => {
    const p = new Plumbing(spec({ outsideInterface: "nope0" }), { runner });
    await t.rejects(p.apply(), {
      code: ErrorCode.Plumbing,
      message: /nope0 \(--outside-interface\) not found/,
    });
    t.same(snapshot(), clean);
  });

  t.test("ip_forward=0 is refused unless setIpForward, which is restored on remove", async (t) => {
    setSysctl("net.ipv4.ip_forward", "0");
    try {
      await t.rejects(new Plumbing(spec(), { runner }).apply(), {
        code: ErrorCode.Prereq,
        message: /ip_forward is 0.*--set-ip-forward/,
      });
      t.same(snapshot(), clean);
      const p = new Plumbing(spec({ setIpForward: true }), { runner });
      await p.apply();
      t.equal(sysctl("net.ipv4.ip_forward"), "1");
      await p.remove();
      t.equal(sysctl("net.ipv4.ip_forward"), "0", "restored");
      t.same(snapshot(), clean);
    } finally {
      setSysctl("net.ipv4.ip_forward", "1");
    }
  });

  t.test("inside and outside may be the same interface (single-ENI EC2)", async (t) => {
    const p = new Plumbing(
      spec({
        insideInterface: "eni0",
        outsideInterface: "eni0",
        inside: [cidr("172.31.0.0/16")],
        natAddresses: [parseIpv4("172.31.0.20")],
      }),
      { runner },
    );
    await p.apply();
    const s = snapshot();
    t.match(s.rules.join("\n"), /from 172\.31\.0\.0\/16 iif eni0 lookup 4242/);
    t.match(s.table, /throw 172\.31\.0\.0\/16/);
    t.match(s.proxy, /172\.31\.0\.20 dev eni0/);
    t.match(s.main.join("\n"), /172\.31\.0\.20 dev tunnat0/);
    await p.remove();
    t.same(snapshot(), clean);
  });

  t.test("a crashed run's leftovers are removed at start, and only tunnat's own", async (t) => {
    const first = new Plumbing(spec(), { runner });
    await first.apply();
    // "Crash": never call remove(); the state file and every item stay. Someone else's rule that
    // uses the same table at another priority must survive the cleanup.
    gw("rule", "add", "from", "10.9.0.0/16", "lookup", "4242", "priority", "100");
    try {
      const second = new Plumbing(spec(), { runner });
      await second.apply();
      const s = snapshot();
      t.equal(s.rules.filter((l) => l.startsWith("4242:")).length, 2, "no duplicate rules");
      t.match(gw("rule", "show"), /100:\s+from 10\.9\.0\.0\/16 lookup 4242/, "foreign rule kept");
      await second.remove();
    } finally {
      gw("rule", "del", "from", "10.9.0.0/16", "lookup", "4242", "priority", "100");
    }
    t.same(snapshot(), clean);
  });
}
