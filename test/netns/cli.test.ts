/**
 * `tunnat lab up/down` and the real daemon process in the lab (root; skipped otherwise).
 * Topology: lab/README.md (p1, p2 -- br-in [nat: tunnat0] out0 -- inet), built by labUp() with
 * namespaces named tnlabtest-<pid>-*, always removed in teardown.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { daemonArgs, labDown, labUp } from "../../src/cli/lab.js";

const BIN = join(process.cwd(), "bin", "tunnat.js");
const sh = (...a: string[]) =>
  execFileSync(a[0] ?? "", a.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root (ip netns)";
  for (const tool of ["ip", "curl", "ping"])
    try {
      sh("sh", "-c", `command -v ${tool}`);
    } catch {
      return `needs ${tool}`;
    }
  return null;
}

const reason = skipReason();
if (reason) t.plan(0, reason);
else {
  const up = await labUp({ prefix: "tnlabtest", print: false });
  const { lab, state } = up;
  const ns = state.ns;
  t.teardown(() => labDown({ state, stateFile: up.stateFile, print: false }));
  const ctl = join(lab.stateDir, `${state.name}.sock`);
  const inNat = (...a: string[]) => sh("ip", "netns", "exec", ns.nat, ...a);

  function leftovers(): string[] {
    const found: string[] = [];
    if (sh("ip", "-n", ns.nat, "link", "show").includes(lab.daemon.tun)) found.push("tun");
    if (sh("ip", "-n", ns.nat, "rule", "show").includes("lookup 4242")) found.push("rule");
    if (sh("ip", "-n", ns.nat, "route", "show").includes(lab.outside.natAddress))
      found.push("route");
    if (sh("ip", "-n", ns.nat, "neigh", "show", "proxy").includes(lab.outside.natAddress))
      found.push("proxy");
    return found;
  }

  function startDaemon(extra: string[] = []) {
    const child = spawn(
      "ip",
      ["netns", "exec", ns.nat, process.execPath, BIN, "run", ...daemonArgs(lab, ctl), ...extra],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    // "close", not "exit": it comes after stdout and stderr are drained, so log() is complete.
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    return { child, exited, log: () => out };
  }

  async function healthy(): Promise<boolean> {
    for (let i = 0; i < 100; i++) {
      try {
        inNat("curl", "-sf", "-m", "1", `http://${lab.daemon.metrics}/healthz`);
        return true;
      } catch {
        await sleep(100);
      }
    }
    return false;
  }

  t.test("the lab has the documented topology and inet has no route to the inside", async (t) => {
    t.match(sh("ip", "-n", ns.p1, "-4", "addr"), lab.inside.hosts.p1 ?? "?");
    t.notMatch(sh("ip", "-n", ns.inet, "route"), /10\.0\.1\.0|default/);
    t.equal(inNat("sysctl", "-n", "net.ipv4.ip_forward").trim(), "1");
  });

  t.test(
    "the daemon forwards, SIGHUP reloads, SIGTERM exits 0 within 2 s leaving the guard only, tunnat down removes it",
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), "tunnat-hup-"));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      const cfg = join(dir, "tunnat.json");
      writeFileSync(cfg, JSON.stringify({ timeouts: { udp: 300 } }));
      const d = startDaemon(["--config", cfg]);
      t.ok(await healthy(), "healthz turns 200");
      // The log line is written just after readiness; give stdout a moment to deliver it.
      for (let i = 0; i < 50 && !/"msg":"forwarding"/.test(d.log()); i++) await sleep(100);
      t.match(d.log(), /"msg":"forwarding"/);
      const ping = sh(
        "ip",
        "netns",
        "exec",
        ns.p1,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        lab.outside.inet[0] ?? "",
      );
      t.match(ping, /2 received/);
      t.same(
        leftovers().sort(),
        ["proxy", "route", "rule", "tun"],
        "plumbing is in place while running",
      );
      // A live setting and two that need a restart: the reload names each with both values.
      writeFileSync(
        cfg,
        JSON.stringify({ timeouts: { udp: 600 }, mapping: "per-destination", maxFlows: 4096 }),
      );
      d.child.kill("SIGHUP");
      for (let i = 0; i < 50 && !/reloaded configuration/.test(d.log()); i++) await sleep(100);
      t.match(d.log(), /reloaded configuration/);
      const line = d
        .log()
        .split("\n")
        .find((l) => l.includes("reloaded configuration"));
      const rec = JSON.parse(line ?? "{}") as {
        msg?: string;
        applied?: unknown[];
        needRestart?: unknown[];
      };
      t.same(
        rec.needRestart,
        [
          { field: "mapping", old: "endpoint-independent", new: "per-destination" },
          { field: "maxFlows", old: "262144", new: "4096" },
        ],
        "the log names each setting that needs a restart, with old and new value",
      );
      t.same(rec.applied, [{ field: "timeouts.udp", old: "300", new: "600" }]);
      t.match(rec.msg, /mapping "endpoint-independent" -> "per-destination"/);
      const st = JSON.parse(inNat(process.execPath, BIN, "stats", "--json", "--socket", ctl)) as {
        lastReload?: { needRestart?: { field: string }[] };
      };
      t.same(
        st.lastReload?.needRestart?.map((c) => c.field),
        ["mapping", "maxFlows"],
        "tunnat stats reports the last reload",
      );
      const human = inNat(process.execPath, BIN, "stats", "--socket", ctl);
      t.match(human, /needRestart\s+mapping endpoint-independent -> per-destination, maxFlows/);
      const t0 = Date.now();
      d.child.kill("SIGTERM");
      const code = await d.exited;
      t.equal(code, 0);
      t.ok(Date.now() - t0 < 2000, `stopped in ${Date.now() - t0} ms`);
      t.same(leftovers(), ["rule"], "no TUN, route or proxy entry is left; the guard's rule stays");
      t.match(inNat("nft", "list", "tables"), /tunnat_4242/, "so does the guard's nft table");
      t.match(inNat(process.execPath, BIN, "down", ...daemonArgs(lab, ctl)), /removed/);
      t.same(leftovers(), [], "tunnat down removes the guard");
      t.notMatch(inNat("nft", "list", "tables"), /tunnat/, "its nft table too");
    },
  );

  t.test("a failed start exits 1 with the error code and leaves nothing", async (t) => {
    const d = startDaemon(["--outside-interface", "nope0"]);
    const code = await d.exited;
    t.equal(code, 1);
    t.match(d.log(), /TUNNAT_ERR_PLUMBING/);
    t.match(d.log(), /nope0/);
    t.same(leftovers(), []);
  });

  t.test("a bad flag value exits 2 naming it, before touching anything", async (t) => {
    const d = startDaemon(["--ports", "9-2"]);
    t.equal(await d.exited, 2);
    t.match(d.log(), /invalid --ports "9-2"/);
    t.same(leftovers(), []);
  });

  t.test("a bad boolean value exits 2 naming it, before touching anything", async (t) => {
    for (const arg of ["--manage-routes=maybe", "--set-ip-forward=yes please"]) {
      const d = startDaemon([arg]);
      // Were the value read as false, the daemon would start and run: bound the wait, then stop it.
      const timer = setTimeout(() => d.child.kill("SIGTERM"), 15_000);
      const code = await d.exited;
      clearTimeout(timer);
      const [flag, value] = arg.split("=");
      t.equal(code, 2, arg);
      t.match(d.log(), `invalid ${flag} ${JSON.stringify(value)}: expected true or false`);
      t.same(leftovers(), [], arg);
    }
  });

  t.test("tunnat check in the nat namespace passes with the lab's flags", async (t) => {
    const r = inNat(process.execPath, BIN, "check", ...daemonArgs(lab, ctl));
    t.match(r, /all checks passed/);
  });
}
