import { spawnSync } from "node:child_process";
import { join } from "node:path";
import t from "tap";

const BIN = join(process.cwd(), "bin", "tunnat.js");
function tunnat(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", ...env },
    timeout: 20_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const OK = ["--inside", "10.0.0.0/16", "--nat-address", "198.51.100.7"];

t.test("--help lists every command and exits 0", async (t) => {
  const r = tunnat(["--help"]);
  t.equal(r.code, 0);
  for (const c of ["run", "check", "flows", "stats", "lab"])
    t.match(r.out, new RegExp(`tunnat ${c}`));
});

t.test("--version prints the package version", async (t) => {
  const r = tunnat(["--version"]);
  t.equal(r.code, 0);
  t.match(r.out.trim(), /^\d+\.\d+\.\d+/);
});

t.test("run --help lists the settings with their environment variables", async (t) => {
  const r = tunnat(["run", "--help"]);
  t.equal(r.code, 0);
  for (const f of [
    "--inside",
    "--nat-address",
    "--max-flows",
    "--no-manage-routes",
    "TUNNAT_MAX_FLOWS",
    "--preset",
  ])
    t.match(r.out, f.replace("--no-", "--"));
});

t.test("a bad value exits 2 and names the flag and the value", async (t) => {
  const r = tunnat(["run", ...OK, "--max-flows", "abc"]);
  t.equal(r.code, 2);
  t.match(r.err, 'invalid --max-flows "abc": expected an integer 1024..16777216');
  t.match(r.err, "TUNNAT_ERR_CONFIG");
});

t.test("a bad environment value exits 2 and names the variable", async (t) => {
  const r = tunnat(["run", ...OK], { TUNNAT_UDP_TIMEOUT: "30" });
  t.equal(r.code, 2);
  t.match(r.err, /invalid TUNNAT_UDP_TIMEOUT "30": RFC 4787 REQ-5/);
});

t.test("an unknown flag exits 2 and names it", async (t) => {
  const r = tunnat(["run", ...OK, "--max-flow", "5"]);
  t.equal(r.code, 2);
  t.match(r.err, /Unknown argument.*max-flow/);
});

t.test("a flag without its value exits 2", async (t) => {
  const r = tunnat(["run", "--inside"]);
  t.equal(r.code, 2);
  t.match(r.err, /inside/);
});

t.test("no command exits 2 with a hint", async (t) => {
  const r = tunnat([]);
  t.equal(r.code, 2);
  t.match(r.err, /tunnat --help/);
});

t.test("a NAT address inside the inside prefix exits 2 citing RFC 4787 REQ-7", async (t) => {
  const r = tunnat([
    "run",
    "--inside",
    "10.0.0.0/16",
    "--nat-address",
    "10.0.9.9",
    "--no-manage-routes",
  ]);
  t.equal(r.code, 2);
  t.match(r.err, /invalid --nat-address "10\.0\.9\.9".*REQ-7/);
});

t.test("stats and flows say the daemon is not reachable when the socket is absent", async (t) => {
  for (const cmd of ["stats", "flows"]) {
    const r = tunnat([cmd, "--socket", "/nonexistent/tunnat.sock"]);
    t.equal(r.code, 1, cmd);
    t.match(r.err, "daemon not reachable at /nonexistent/tunnat.sock");
  }
});

t.test(
  "check --json reports a failing config and exits 2 (as run does) without changing anything",
  async (t) => {
    const r = tunnat(["check", "--json", "--inside", "10.0.0.0/16"]);
    t.equal(r.code, 2);
    const doc = JSON.parse(r.out) as {
      ok: boolean;
      checks: { name: string; ok: boolean; detail: string }[];
    };
    t.equal(doc.ok, false);
    const cfg = doc.checks.find((c) => c.name === "config");
    t.equal(cfg?.ok, false);
    t.match(cfg?.detail, /missing --nat-address/);
    for (const name of [
      "tun device",
      "CAP_NET_ADMIN",
      "ip_forward",
      "inside interface",
      "address overlap",
    ])
      t.ok(
        doc.checks.some((c) => c.name === name),
        name,
      );
  },
);

t.test("a bad boolean value is refused naming the flag, not read as false", async (t) => {
  // `check` validates the config without starting anything, so this is safe outside a namespace;
  // test/netns/cli.test.ts checks that `run` exits 2 on the same values.
  const cases: [string, string][] = [
    ["manage-routes", "maybe"],
    ["set-ip-forward", "yes please"],
    ["offloads", "sometimes"],
  ];
  for (const [flag, value] of cases) {
    const r = tunnat(["check", "--json", ...OK, `--${flag}=${value}`]);
    t.equal(r.code, 2, `${flag}: a config error exits 2`);
    const doc = JSON.parse(r.out) as { checks: { name: string; ok: boolean; detail: string }[] };
    const cfg = doc.checks.find((c) => c.name === "config");
    t.equal(cfg?.ok, false, `--${flag}=${value} makes the config invalid`);
    t.match(cfg?.detail, `invalid --${flag} ${JSON.stringify(value)}: expected true or false`);
  }
});

t.test("a bare boolean flag means true and --no-<flag> means false", async (t) => {
  const r = tunnat(["check", "--json", ...OK, "--no-manage-routes", "--set-ip-forward"]);
  const doc = JSON.parse(r.out) as { checks: { name: string; ok: boolean; detail: string }[] };
  const cfg = doc.checks.find((c) => c.name === "config");
  t.equal(cfg?.ok, true, cfg?.detail ?? "no config check");
  const settings = (doc as { settings?: Record<string, unknown> }).settings;
  t.equal(settings?.manageRoutes, false, "check --json shows the effective settings");
  t.equal(settings?.setIpForward, true);
});
