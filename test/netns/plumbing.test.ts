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
import t, { type Test } from "tap";
import { ErrorCode, TunnatError } from "../../src/base/errors.js";
import { Plumbing, type PlumbingSpec } from "../../src/control/plumbing.js";
import { CommandError, netnsRunner, type Runner } from "../../src/control/runner.js";
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
  /** The real runner, except that `neigh add proxy 203.0.113.3`, the last step, fails. */
  const failingLast: Runner = {
    ...runner,
    ip: (args) =>
      args.join(" ").startsWith("neigh add proxy 203.0.113.3")
        ? Promise.reject(new CommandError(["ip", ...args], "RTNETLINK answers: File exists", 2))
        : runner.ip(args),
  };

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
      nft: sh("ip", "netns", "exec", GW, "nft", "list", "tables").trim(),
    };
  }
  /** Stop (the guard stays), then `tunnat down`'s removal: nothing is left. */
  async function stopAndDown(t: Test, p: Plumbing) {
    t.same(await p.remove(), [], "remove reports no problem");
    const s = snapshot();
    t.match(s.table, /prohibit default metric 4294967295/, "the guard's prohibit route stays");
    t.match(s.nft, /table ip tunnat_4242/, "the guard's nft table stays");
    t.ok(s.rules.length > 0, "the guard's rules stay");
    t.same(s.proxy, "", "the proxy entry is gone");
    t.same(s.main, [], "no route via the TUN is left");
    const down = await p.down();
    t.same(down.warnings, []);
    t.ok(down.done.length > 0, "down says what it removed");
    t.same(snapshot(), clean, "after down nothing is left behind");
    t.same((await p.down()).done, [], "a second down has nothing to remove");
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
      t.match(s.nft, /table ip tunnat_4242/, "the guard's nft table is installed");
      t.match(s.table, /prohibit default metric 4294967295/, "with a prohibit default");
      await stopAndDown(t, p);
      gw("link", "set", "dev", "tunnat0", "down");
    },
  );

  t.test(
    "a step that fails half-way is undone, the guard too, and named in a TUNNAT_ERR_PLUMBING error",
    async (t) => {
      // The second proxy ARP step, the last one, fails after everything else, the guard
      // included, was applied.
      const p = new Plumbing(spec(), { runner: failingLast });
      const err = await p.apply().then(
        () => null,
        (e: unknown) => e,
      );
      t.ok(err instanceof TunnatError);
      t.equal((err as TunnatError).code, ErrorCode.Plumbing);
      t.match((err as Error).message, /ip neigh add proxy 203\.0\.113\.3 dev out0/);
      t.match((err as Error).message, /File exists/);
      t.same(snapshot(), clean, "everything applied before the failure was removed");
    },
  );

  t.test(
    "a start that fails leaves the guard of an earlier run as it was (here: another config)",
    async (t) => {
      const first = new Plumbing(spec(), { runner });
      await first.apply();
      await first.remove();
      const guarded = snapshot();
      const nftBefore = sh("ip", "netns", "exec", GW, "nft", "list", "table", "ip", "tunnat_4242");
      t.equal(guarded.rules.length, 2, "the earlier run's guard is there");
      const second = new Plumbing(spec({ inside: [cidr("10.0.1.0/24")] }), {
        runner: failingLast,
      });
      await t.rejects(second.apply(), { code: ErrorCode.Plumbing, message: /File exists/ });
      const after = snapshot();
      t.same(after.rules, guarded.rules, "both rules of the earlier guard are back");
      t.same(after.table, guarded.table, "its routes too");
      t.equal(
        sh("ip", "netns", "exec", GW, "nft", "list", "table", "ip", "tunnat_4242"),
        nftBefore,
        "and its nft table",
      );
      await first.down();
      t.same(snapshot(), clean);
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
      await p.down();
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
    const rules = sh("ip", "netns", "exec", GW, "nft", "list", "table", "ip", "tunnat_4242");
    t.match(
      rules,
      /iifname "eni0" ip saddr != @inside ip daddr != @inside oifname != "tunnat0"/,
      "single ENI: a foreign source is spoofed only when it does not go to the TUN",
    );
    await stopAndDown(t, p);
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
      await second.down();
    } finally {
      gw("rule", "del", "from", "10.9.0.0/16", "lookup", "4242", "priority", "100");
    }
    t.same(snapshot(), clean);
  });
}
