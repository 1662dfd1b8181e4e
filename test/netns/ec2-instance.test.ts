/**
 * The deployment, run for real in namespaces this test makes (names carry the PID) and always
 * removes: the EC2 network set-up (deploy/configure-network.sh) against a namespace that plays
 * the instance, with IMDSv2 served by a fake metadata server inside it; then the daemon started
 * the way systemd/tunnat.service starts it, and traffic across it.
 *
 *   tnd-<pid>-p1                 tnd-<pid>-nat  ("the instance")              tnd-<pid>-inet
 *   eth0 10.0.1.2/24 ──veth── in0 10.0.1.1/24                  out0 ──veth── eth0 203.0.113.10/24
 *   default via 10.0.1.1          lo 169.254.169.254 (fake IMDS)  203.0.113.2/24    no route to 10.0.1.0/24
 *                                 tunnat0, NAT address 203.0.113.1 (proxy ARP on out0)
 *
 * Addresses come from lab/lab.json (the namespace lab's single source); the values above are
 * its defaults. The daemon runs as a uid that is not root, with no groups, no_new_privs and
 * CAP_NET_ADMIN as its only capability (setpriv, from the unit's own AmbientCapabilities= and
 * CapabilityBoundingSet=), in a mount namespace that gives it what the unit gives it:
 * /dev/net/tun mode 0666 (udev's default), a writable /run/tunnat (RuntimeDirectory=), and a
 * read-only /proc/sys (ProtectKernelTunables=yes), so the sysctls must come from the sysctl file.
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const P1 = `tnd-${process.pid}-p1`;
const NAT = `tnd-${process.pid}-nat`;
const INET = `tnd-${process.pid}-inet`;
const IMDS_IP = "169.254.169.254";
/** An unused uid/gid for the daemon (DynamicUser-like: no passwd entry, no groups). */
const DAEMON_UID = 61000 + (process.pid % 1000);

interface Lab {
  insidePrefix: string;
  insideLen: string;
  gateway: string;
  p1: string;
  outsidePrefix: string;
  outsideLen: string;
  natIfAddr: string;
  natAddr: string;
  inet: string;
  tun: string;
}

function readLab(): Lab {
  const lab: Lab = {
    insidePrefix: "10.0.1.0/24",
    insideLen: "24",
    gateway: "10.0.1.1",
    p1: "10.0.1.2",
    outsidePrefix: "203.0.113.0/24",
    outsideLen: "24",
    natIfAddr: "203.0.113.2",
    natAddr: "203.0.113.1",
    inet: "203.0.113.10",
    tun: "tunnat0",
  };
  const file = join(ROOT, "lab", "lab.json");
  if (!existsSync(file)) return lab;
  const j = JSON.parse(readFileSync(file, "utf8")) as {
    inside?: { prefix?: string; gateway?: string; hosts?: Record<string, string> };
    outside?: {
      prefix?: string;
      natInterfaceAddress?: string;
      natAddress?: string;
      inet?: string[];
    };
    daemon?: { tun?: string };
  };
  lab.insidePrefix = j.inside?.prefix ?? lab.insidePrefix;
  lab.gateway = j.inside?.gateway ?? lab.gateway;
  lab.p1 = j.inside?.hosts?.p1 ?? lab.p1;
  lab.outsidePrefix = j.outside?.prefix ?? lab.outsidePrefix;
  lab.natIfAddr = j.outside?.natInterfaceAddress ?? lab.natIfAddr;
  lab.natAddr = j.outside?.natAddress ?? lab.natAddr;
  lab.inet = j.outside?.inet?.[0] ?? lab.inet;
  lab.tun = j.daemon?.tun ?? lab.tun;
  lab.insideLen = lab.insidePrefix.split("/")[1] ?? "24";
  lab.outsideLen = lab.outsidePrefix.split("/")[1] ?? "24";
  return lab;
}

const LAB = readLab();

function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** The CLI entry the package's bin runs, if built. */
function cliPath(): string | undefined {
  for (const p of [join(ROOT, "bin", "tunnat.js"), join(ROOT, "dist", "src", "cli", "main.js")])
    if (existsSync(p)) return p;
  return undefined;
}

function addonBuilt(): boolean {
  return existsSync(join(ROOT, "build", "Release", "tunnat_tun.node"));
}

function missingForNetwork(): string | undefined {
  const need: string[] = [];
  if (process.getuid?.() !== 0) need.push("root");
  for (const c of ["ip", "curl", "python3", "bash"]) if (!hasCommand(c)) need.push(c);
  return need.length > 0 ? `needs ${need.join(", ")}` : undefined;
}

function missingForDaemon(): string | undefined {
  const need: string[] = [];
  const net = missingForNetwork();
  if (net) need.push(net);
  for (const c of ["setpriv", "unshare", "mknod", "ping"]) if (!hasCommand(c)) need.push(c);
  if (!existsSync(join(ROOT, "dist", "src", "cli", "main.js")))
    need.push("the daemon's CLI (dist/src/cli/main.js: npm run build)");
  if (!existsSync(join(ROOT, "bin", "tunnat.js"))) need.push("bin/tunnat.js");
  if (!addonBuilt()) need.push("the native addon (build/Release/tunnat_tun.node: npm rebuild)");
  if (!existsSync("/dev/net/tun")) need.push("/dev/net/tun");
  return need.length > 0 ? `needs ${need.join(", ")}` : undefined;
}

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv, timeout = 30_000) {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout, env: env ?? process.env });
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

function must(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr.trim()}`);
  return r.stdout;
}

const ip = (...args: string[]): string => must("ip", args);
const inNs = (ns: string, cmd: string, ...args: string[]) =>
  run("ip", ["netns", "exec", ns, cmd, ...args]);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (ok()) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function buildTopology(): void {
  for (const ns of [P1, NAT, INET]) {
    ip("netns", "add", ns);
    ip("-n", ns, "link", "set", "lo", "up");
  }
  ip("link", "add", "in0", "netns", NAT, "type", "veth", "peer", "name", "eth0", "netns", P1);
  ip("link", "add", "out0", "netns", NAT, "type", "veth", "peer", "name", "eth0", "netns", INET);
  ip("-n", P1, "addr", "add", `${LAB.p1}/${LAB.insideLen}`, "dev", "eth0");
  ip("-n", NAT, "addr", "add", `${LAB.gateway}/${LAB.insideLen}`, "dev", "in0");
  ip("-n", NAT, "addr", "add", `${LAB.natIfAddr}/${LAB.outsideLen}`, "dev", "out0");
  ip("-n", INET, "addr", "add", `${LAB.inet}/${LAB.outsideLen}`, "dev", "eth0");
  for (const [ns, dev] of [
    [P1, "eth0"],
    [NAT, "in0"],
    [NAT, "out0"],
    [INET, "eth0"],
  ] as const)
    ip("-n", ns, "link", "set", dev, "up");
  ip("-n", P1, "route", "add", "default", "via", LAB.gateway);
  // The instance's metadata service address, served by the fake IMDS below.
  ip("-n", NAT, "addr", "add", `${IMDS_IP}/32`, "dev", "lo");
}

function removeTopology(): void {
  for (const ns of [P1, NAT, INET]) spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
}

/** IMDSv2 as EC2 serves it: PUT a token, then GETs that must carry it (else 401). */
const FAKE_IMDS = `
import json, sys, http.server
data_file, log_file = sys.argv[1], sys.argv[2]
TOKEN = "fake-imds-token"
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def note(self, s):
        with open(log_file, "a") as f:
            f.write(s + "\\n")
    def reply(self, code, body):
        b = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self.note("PUT " + self.path)
            return self.reply(200, TOKEN)
        self.note("PUT " + self.path + " 400")
        self.reply(400, "")
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.note("GET " + self.path + " 401")
            return self.reply(401, "")
        data = json.load(open(data_file))
        p = self.path.removeprefix("/latest/meta-data/")
        self.note("GET " + self.path)
        if p in data:
            return self.reply(200, data[p])
        self.reply(404, "")
http.server.HTTPServer(("${IMDS_IP}", 80), H).serve_forever()
`;

function macOf(ns: string, dev: string): string {
  return must("ip", ["netns", "exec", ns, "cat", `/sys/class/net/${dev}/address`]).trim();
}

/** Metadata of the instance: the primary IP has a public IP, the secondary an Elastic IP. */
function metadata(mac: string, withEip: boolean): Record<string, string> {
  const base = `network/interfaces/macs/${mac}`;
  const md: Record<string, string> = {
    mac,
    "local-ipv4": LAB.natIfAddr,
    [`${base}/local-ipv4s`]: `${LAB.natIfAddr}\n${LAB.natAddr}`,
    [`${base}/ipv4-associations/`]: withEip ? "198.51.100.20\n198.51.100.7" : "198.51.100.20",
    [`${base}/ipv4-associations/198.51.100.20`]: LAB.natIfAddr,
    // Two CIDR blocks; inside = the VPC without the instance's subnet (the outside one here).
    [`${base}/vpc-ipv4-cidr-blocks`]: `${LAB.insidePrefix}\n${LAB.outsidePrefix}`,
    [`${base}/subnet-ipv4-cidr-block`]: LAB.outsidePrefix,
  };
  if (withEip) md[`${base}/ipv4-associations/198.51.100.7`] = LAB.natAddr;
  return md;
}

function sysctl(ns: string, key: string): string {
  return must("ip", ["netns", "exec", ns, "cat", `/proc/sys/${key.replaceAll(".", "/")}`]).trim();
}

const netSkip = missingForNetwork();

t.test(
  "the EC2 deployment works in a namespace that plays the instance",
  { skip: netSkip },
  async (t) => {
    const tmp = mkdtempSync(join(tmpdir(), "tunnat-deploy-"));
    chmodSync(tmp, 0o755);
    const children: ChildProcess[] = [];
    t.teardown(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      removeTopology();
      rmSync(tmp, { recursive: true, force: true });
    });
    buildTopology();

    const mdFile = join(tmp, "metadata.json");
    const imdsLog = join(tmp, "imds.log");
    const outsideMac = macOf(NAT, "out0");
    writeFileSync(mdFile, JSON.stringify(metadata(outsideMac, true)));
    const imds = spawn("ip", ["netns", "exec", NAT, "python3", "-c", FAKE_IMDS, mdFile, imdsLog], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.push(imds);
    await waitFor(
      "the fake IMDS",
      () =>
        inNs(
          NAT,
          "curl",
          "-fsS",
          "-m",
          "1",
          "-X",
          "PUT",
          "-H",
          "X-aws-ec2-metadata-token-ttl-seconds: 1",
          `http://${IMDS_IP}/latest/api/token`,
        ).status === 0,
    );

    const cli = cliPath();
    const tunnatCmd = join(tmp, "tunnat");
    writeFileSync(
      tunnatCmd,
      `#!/bin/sh\nexec "${process.execPath}" "${cli ?? "/nonexistent"}" "$@"\n`,
    );
    chmodSync(tunnatCmd, 0o755);
    const configFile = join(tmp, "etc", "tunnat.json");
    const sysctlFile = join(tmp, "etc", "60-tunnat.conf");
    const baseEnv: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      TUNNAT_IMDS_ENDPOINT: `http://${IMDS_IP}`,
      TUNNAT_CONFIG_FILE: configFile,
      TUNNAT_SYSCTL_FILE: sysctlFile,
      TUNNAT_BIN: tunnatCmd,
      TUNNAT_CHECK: cli ? "strict" : "skip",
      TUNNAT_TUN: LAB.tun,
    };
    const script = join(ROOT, "deploy", "configure-network.sh");
    const configure = (env: NodeJS.ProcessEnv) =>
      run("ip", ["netns", "exec", NAT, "bash", script], { ...baseEnv, ...env }, 60_000);

    await t.test(
      "with metadata from IMDSv2, configure-network.sh writes the config, sets the sysctls and frees the NAT address",
      async (t) => {
        // What Amazon Linux's ec2-net-utils does with a secondary IP: put it on the interface.
        ip("-n", NAT, "addr", "add", `${LAB.natAddr}/32`, "dev", "out0");
        // The lab has two interfaces where a single-ENI instance has one: only this is overridden.
        const r = configure({ TUNNAT_MD_INSIDE_INTERFACE: "in0" });
        t.equal(r.status, 0, `configure-network.sh succeeds: ${r.stderr}`);
        const cfg = JSON.parse(readFileSync(configFile, "utf8")) as Record<string, unknown>;
        t.same(cfg, {
          inside: [LAB.insidePrefix],
          insideInterface: "in0",
          natAddress: [LAB.natAddr],
          outsideInterface: "out0",
          tun: LAB.tun,
          preset: "aws",
          metrics: "127.0.0.1:9469",
          stateFile: "/var/lib/tunnat/plumbing.json",
        });
        t.equal(sysctl(NAT, "net.ipv4.ip_forward"), "1", "ip_forward is on in the instance");
        t.equal(
          sysctl(NAT, "net.ipv4.conf.default.rp_filter"),
          "2",
          "a new TUN starts in loose rp_filter",
        );
        t.match(readFileSync(sysctlFile, "utf8"), /^net\.ipv4\.ip_forward = 1$/m);
        t.equal(
          ip("-n", NAT, "-o", "-4", "addr", "show", "to", `${LAB.natAddr}/32`).trim(),
          "",
          "the host no longer owns the NAT address",
        );
        const log = readFileSync(imdsLog, "utf8");
        t.match(log, /^PUT \/latest\/api\/token$/m, "a session token was asked for (IMDSv2)");
        t.notMatch(log, / 401$/m, "every metadata request carried the token");
        t.match(log, /ipv4-associations/, "the Elastic IP associations were read");
        if (cli) {
          t.match(r.stdout, /all checks passed/, "tunnat check passes as root in the instance");
        } else {
          t.comment("tunnat check not run: dist/src/cli/main.js is not built");
        }
      },
    );

    await t.test(
      "configure-network.sh refuses an instance whose secondary IP has no Elastic IP",
      async (t) => {
        writeFileSync(mdFile, JSON.stringify(metadata(outsideMac, false)));
        const r = configure({
          TUNNAT_MD_INSIDE_INTERFACE: "in0",
          TUNNAT_CONFIG_FILE: join(tmp, "no.json"),
        });
        t.not(r.status, 0, "it fails");
        t.match(r.stderr, /no secondary private IP .* has an Elastic IP/);
        t.notOk(existsSync(join(tmp, "no.json")), "no config is written");
        writeFileSync(mdFile, JSON.stringify(metadata(outsideMac, true)));
      },
    );

    await t.test(
      "environment variables replace every metadata value, and IMDS is not asked",
      async (t) => {
        const before = readFileSync(imdsLog, "utf8");
        const r = configure({
          TUNNAT_IMDS_ENDPOINT: "http://127.0.0.1:9",
          TUNNAT_MD_INTERFACE: "out0",
          TUNNAT_MD_INSIDE_INTERFACE: "in0",
          TUNNAT_MD_NAT_ADDRESSES: LAB.natAddr,
          TUNNAT_MD_INSIDE_CIDRS: LAB.insidePrefix,
          TUNNAT_CONFIG_FILE: join(tmp, "env.json"),
          TUNNAT_PRESET: "default",
          TUNNAT_CHECK: "skip",
        });
        t.equal(r.status, 0, `configure-network.sh succeeds: ${r.stderr}`);
        const cfg = JSON.parse(readFileSync(join(tmp, "env.json"), "utf8")) as Record<
          string,
          unknown
        >;
        t.same(cfg.natAddress, [LAB.natAddr]);
        t.same(cfg.inside, [LAB.insidePrefix]);
        t.equal(cfg.preset, "default");
        t.equal(readFileSync(imdsLog, "utf8"), before, "the metadata service saw no request");
      },
    );

    await t.test(
      "cloud-init.sh installs the release tarball served in the instance only when its SHA-256 matches",
      { skip: hasCommand("npm") && hasCommand("sha256sum") ? false : "needs npm, sha256sum" },
      async (t) => {
        // A release tarball made here with `npm pack` (a stand-in package without dependencies,
        // so npm needs no registry), served over HTTP inside the instance's namespace.
        const src = join(tmp, "pkg");
        const www = join(tmp, "www");
        for (const d of [join(src, "bin"), www]) must("mkdir", ["-p", d]);
        writeFileSync(
          join(src, "package.json"),
          JSON.stringify({
            name: "tunnat",
            version: "0.0.0-cloudinit",
            bin: { tunnat: "bin/t.js" },
          }),
        );
        writeFileSync(
          join(src, "bin", "t.js"),
          "#!/usr/bin/env node\nconsole.log('tunnat 0.0.0-cloudinit');\n",
        );
        chmodSync(join(src, "bin", "t.js"), 0o755);
        const npmEnv = { ...process.env, npm_config_cache: join(tmp, "npm-cache") };
        const packed = run(
          "npm",
          ["pack", "--silent", "--pack-destination", www, src],
          npmEnv,
          60_000,
        );
        t.equal(packed.status, 0, `npm pack: ${packed.stderr}`);
        const tgz = packed.stdout.trim().split("\n").pop() ?? "";
        const sha = must("sha256sum", [join(www, tgz)]).split(" ")[0] ?? "";
        const port = 20000 + (process.pid % 20000);
        const server = spawn(
          "ip",
          [
            "netns",
            "exec",
            NAT,
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            www,
            String(port),
          ],
          { stdio: "ignore" },
        );
        children.push(server);
        const url = `http://127.0.0.1:${port}/${tgz}`;
        await waitFor(
          "the tarball server",
          () => inNs(NAT, "curl", "-fsS", "-o", "/dev/null", "-m", "1", url).status === 0,
        );

        const cloudInit = (prefix: string, env: NodeJS.ProcessEnv) =>
          run(
            "ip",
            ["netns", "exec", NAT, "bash", join(ROOT, "deploy", "cloud-init.sh")],
            {
              PATH: process.env.PATH,
              HOME: tmp,
              npm_config_cache: join(tmp, "npm-cache"),
              npm_config_offline: "true",
              TUNNAT_STEPS: "tunnat",
              TUNNAT_PREFIX: prefix,
              TUNNAT_INSTALL_LOG: join(tmp, "install.log"),
              TUNNAT_TARBALL_URL: url,
              ...env,
            },
            120_000,
          );

        const good = join(tmp, "prefix-good");
        const ok = cloudInit(good, { TUNNAT_TARBALL_SHA256: sha });
        t.equal(ok.status, 0, `installs with the right checksum: ${ok.stdout}${ok.stderr}`);
        t.match(ok.stdout, new RegExp(`tarball sha256 ${sha} ok`));
        t.match(run(join(good, "bin", "tunnat"), ["--version"]).stdout, /0\.0\.0-cloudinit/);

        const badPrefix = join(tmp, "prefix-bad");
        const wrong = `${sha.slice(0, 63)}${sha.endsWith("0") ? "1" : "0"}`;
        const bad = cloudInit(badPrefix, { TUNNAT_TARBALL_SHA256: wrong });
        t.not(bad.status, 0, "a tarball with another checksum is refused");
        t.match(
          bad.stdout,
          /checksum mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}; not installed/,
        );
        t.notOk(existsSync(join(badPrefix, "bin", "tunnat")), "and nothing is installed");

        const none = cloudInit(join(tmp, "prefix-none"), { TUNNAT_TARBALL_SHA256: "" });
        t.not(none.status, 0, "no checksum, no install");
        t.match(none.stdout, /TUNNAT_TARBALL_SHA256 must be the tarball's sha256sum/);

        const gone = cloudInit(join(tmp, "prefix-404"), {
          TUNNAT_TARBALL_SHA256: sha,
          TUNNAT_TARBALL_URL: `http://127.0.0.1:${port}/missing.tgz`,
        });
        t.not(gone.status, 0, "a missing tarball fails the install");
        t.match(gone.stdout, /cannot download/);
        server.kill("SIGKILL");
      },
    );

    const nodeArch = { x64: "x64", arm64: "arm64" }[process.arch as string];
    await t.test(
      "cloud-init.sh installs Node.js from a dist server only when the tarball matches SHASUMS256.txt",
      { skip: nodeArch && hasCommand("xz") ? false : "needs xz and an x64 or arm64 machine" },
      async (t) => {
        // A stand-in for nodejs.org/dist: latest-v99.x/ with SHASUMS256.txt and a linux tarball
        // whose bin/node only prints its version (major 99, so the machine's node is too old).
        const dist = join(tmp, "dist");
        const name = `node-v99.0.0-linux-${nodeArch}`;
        const dir = join(dist, "latest-v99.x");
        must("mkdir", ["-p", join(tmp, "nodesrc", name, "bin"), dir]);
        writeFileSync(join(tmp, "nodesrc", name, "bin", "node"), "#!/bin/sh\necho v99.0.0\n");
        chmodSync(join(tmp, "nodesrc", name, "bin", "node"), 0o755);
        must("tar", ["-cJf", join(dir, `${name}.tar.xz`), "-C", join(tmp, "nodesrc"), name]);
        const sum = must("sha256sum", [join(dir, `${name}.tar.xz`)]).split(" ")[0] ?? "";
        const shasums = (hash: string) =>
          `${"0".repeat(64)}  ${name.replace(/linux-.*/, "darwin-arm64")}.tar.gz\n${hash}  ${name}.tar.xz\n`;
        writeFileSync(join(dir, "SHASUMS256.txt"), shasums(sum));
        const port = 20000 + ((process.pid + 7) % 20000);
        const server = spawn(
          "ip",
          [
            "netns",
            "exec",
            NAT,
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            dist,
            String(port),
          ],
          { stdio: "ignore" },
        );
        children.push(server);
        const shaUrl = `http://127.0.0.1:${port}/latest-v99.x/SHASUMS256.txt`;
        await waitFor(
          "the dist server",
          () => inNs(NAT, "curl", "-fsS", "-o", "/dev/null", "-m", "1", shaUrl).status === 0,
        );
        const install = (prefix: string) =>
          run(
            "ip",
            ["netns", "exec", NAT, "bash", join(ROOT, "deploy", "cloud-init.sh")],
            {
              PATH: process.env.PATH,
              TUNNAT_STEPS: "node",
              NODE_MAJOR: "99",
              NODE_DIST: `http://127.0.0.1:${port}`,
              TUNNAT_NODE_PREFIX: prefix,
              TUNNAT_INSTALL_LOG: join(tmp, "install-node.log"),
            },
            60_000,
          );
        const good = install(join(tmp, "node-good"));
        t.equal(good.status, 0, `installs: ${good.stdout}${good.stderr}`);
        t.match(
          good.stdout,
          new RegExp(`node v99\\.0\\.0 installed from ${name}\\.tar\\.xz \\(SHA-256 checked\\)`),
        );
        t.ok(existsSync(join(tmp, "node-good", "bin", "node")), "unpacked into the prefix");

        writeFileSync(
          join(dir, "SHASUMS256.txt"),
          shasums(`${sum.slice(0, 63)}${sum.endsWith("0") ? "1" : "0"}`),
        );
        const bad = install(join(tmp, "node-bad"));
        t.not(bad.status, 0, "a tarball that does not match SHASUMS256.txt is refused");
        t.match(
          bad.stdout,
          new RegExp(`Node\\.js ${name}\\.tar\\.xz does not match its SHASUMS256\\.txt`),
        );
        t.notOk(existsSync(join(tmp, "node-bad", "bin", "node")), "and nothing is unpacked");
        server.kill("SIGKILL");
      },
    );

    await t.test(
      "cloud-init.sh attaches the NAT ENI (retrying while it is held), finds its interface by MAC and keeps networkd off the NAT address",
      async (t) => {
        // The instance's view after the attach: a second ENI whose MAC is out0's. The aws CLI
        // is a stand-in (no AWS API here) that fails once, as while the old instance holds it.
        const eni = "eni-0123456789abcdef0";
        const eniIp = LAB.natIfAddr;
        const md = metadata(outsideMac, true);
        Object.assign(md, {
          "instance-id": "i-0fedcba9876543210",
          "placement/region": "eu-test-1",
          "network/interfaces/macs/": `02:00:00:00:00:01/\n${outsideMac}/`,
          "network/interfaces/macs/02:00:00:00:00:01/interface-id": "eni-0primary00000000",
          [`network/interfaces/macs/${outsideMac}/interface-id`]: eni,
        });
        writeFileSync(mdFile, JSON.stringify(md));
        const bin = join(tmp, "fakebin");
        const awsLog = join(tmp, "aws.log");
        must("mkdir", ["-p", bin, join(tmp, "networkd")]);
        writeFileSync(
          join(bin, "aws"),
          `#!/bin/sh\necho "$*" >>"${awsLog}"\n[ "$(wc -l <"${awsLog}")" -ge 2 ] || { echo "IncorrectState: in use" >&2; exit 254; }\n`,
        );
        chmodSync(join(bin, "aws"), 0o755);
        const r = run(
          "ip",
          ["netns", "exec", NAT, "bash", join(ROOT, "deploy", "cloud-init.sh")],
          {
            PATH: `${bin}:${process.env.PATH ?? ""}`,
            TUNNAT_STEPS: "eni",
            TUNNAT_ENI_ID: eni,
            TUNNAT_IMDS_ENDPOINT: `http://${IMDS_IP}`,
            TUNNAT_NETWORKD_DIR: join(tmp, "networkd"),
            TUNNAT_INSTALL_LOG: join(tmp, "install-eni.log"),
            TUNNAT_ATTACH_TRIES: "3",
          },
          60_000,
        );
        t.equal(r.status, 0, `the ENI step succeeds: ${r.stdout}${r.stderr}`);
        const calls = readFileSync(awsLog, "utf8").trim().split("\n");
        t.equal(calls.length, 2, "attach was retried once after a refusal");
        t.equal(
          calls[1],
          `ec2 attach-network-interface --region eu-test-1 --instance-id i-0fedcba9876543210 --network-interface-id ${eni} --device-index 1`,
        );
        t.match(
          r.stdout,
          new RegExp(`NAT interface ${eni} attached: out0 \\(${outsideMac}, ${eniIp}\\)`),
        );
        const net = readFileSync(join(tmp, "networkd", "60-tunnat-nat.network"), "utf8");
        t.match(net, new RegExp(`^MACAddress=${outsideMac}$`, "m"), "matches the NAT ENI by MAC");
        t.match(net, /^DHCP=ipv4$/m, "the ENI's primary IP by DHCP");
        t.notMatch(net, /^Address=/m, "no static address: the NAT address stays off the host");
        t.notOk(net.includes(LAB.natAddr), "the NAT address is not in it");
        t.match(
          net,
          new RegExp(`^IncomingInterface=${LAB.tun}$`, "m"),
          "the TUN's output uses the ENI's table",
        );
        t.match(net, new RegExp(`^From=${eniIp}/32$`, "m"));
        t.match(net, /^RouteTable=4243$/m);

        // An ENI that never attaches fails the install, naming it.
        writeFileSync(
          join(bin, "aws"),
          "#!/bin/sh\necho 'InvalidNetworkInterfaceID.NotFound' >&2\nexit 254\n",
        );
        const bad = run(
          "ip",
          ["netns", "exec", NAT, "bash", join(ROOT, "deploy", "cloud-init.sh")],
          {
            PATH: `${bin}:${process.env.PATH ?? ""}`,
            TUNNAT_STEPS: "eni",
            TUNNAT_ENI_ID: "eni-0000000000000dead",
            TUNNAT_IMDS_ENDPOINT: `http://${IMDS_IP}`,
            TUNNAT_NETWORKD_DIR: join(tmp, "networkd-bad"),
            TUNNAT_INSTALL_LOG: join(tmp, "install-eni.log"),
            TUNNAT_ATTACH_TRIES: "1",
          },
          60_000,
        );
        t.not(bad.status, 0, "a refused attach fails the install");
        t.match(bad.stdout, /cannot attach eni-0000000000000dead to i-0fedcba9876543210/);
        writeFileSync(mdFile, JSON.stringify(metadata(outsideMac, true)));
      },
    );

    const daemonSkip = missingForDaemon();
    await t.test(
      "the daemon runs as systemd/tunnat.service runs it: non-root, CAP_NET_ADMIN only, read-only /proc/sys; traffic crosses",
      { skip: daemonSkip },
      async (t) => {
        const unit = readFileSync(join(ROOT, "systemd", "tunnat.service"), "utf8");
        const caps = (key: string) =>
          (unit.match(new RegExp(`^${key}=(.*)$`, "m"))?.[1] ?? "")
            .split(/\s+/)
            .filter(Boolean)
            .map((c) => c.replace(/^CAP_/, "").toLowerCase());
        const ambient = caps("AmbientCapabilities");
        const bounding = caps("CapabilityBoundingSet");
        t.same(ambient, ["net_admin"], "the unit grants CAP_NET_ADMIN only");
        const setCaps = (list: string[]) => ["-all", ...list.map((c) => `+${c}`)].join(",");
        const nnp = /^NoNewPrivileges=yes$/m.test(unit) ? ["--nnp"] : [];

        const start = (capList: string[], out: { stdout: string; stderr: string }) => {
          // The unit's sandbox, as far as it matters to the daemon: see the header comment.
          const wrapper = [
            "set -e",
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            `install -d -m 0750 -o ${DAEMON_UID} -g ${DAEMON_UID} /run/tunnat`,
            // StateDirectory=tunnat: the config names /var/lib/tunnat/plumbing.json. A tmpfs in
            // this private mount namespace only, so the machine's /var/lib is never touched.
            "mount -t tmpfs -o mode=0755 tmpfs /var/lib",
            `install -d -m 0700 -o ${DAEMON_UID} -g ${DAEMON_UID} /var/lib/tunnat`,
            "mknod -m 0666 /run/tun c 10 200",
            "mount --bind /run/tun /dev/net/tun",
            "mount --bind /proc/sys /proc/sys",
            "mount -o remount,bind,ro /proc/sys",
            'exec "$@"',
          ].join("\n");
          const argv = [
            "netns",
            "exec",
            NAT,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            wrapper,
            "sh",
            "setpriv",
            `--reuid=${DAEMON_UID}`,
            `--regid=${DAEMON_UID}`,
            "--clear-groups",
            ...nnp,
            `--inh-caps=${setCaps(capList)}`,
            `--ambient-caps=${setCaps(capList)}`,
            `--bounding-set=${setCaps(bounding)}`,
            process.execPath,
            join(ROOT, "bin", "tunnat.js"),
            "run",
            "--config",
            configFile,
          ];
          // env -i: the daemon gets a clean environment, as under systemd (and not the test
          // runner's NODE_OPTIONS hooks, which would write into the repository as that uid).
          const child = spawn("env", ["-i", `PATH=${process.env.PATH ?? ""}`, "ip", ...argv], {
            stdio: ["ignore", "pipe", "pipe"],
          });
          child.stdout?.on("data", (d: Buffer) => {
            out.stdout += d.toString();
          });
          child.stderr?.on("data", (d: Buffer) => {
            out.stderr += d.toString();
          });
          children.push(child);
          return child;
        };
        const exited = (c: ChildProcess, ms: number) =>
          new Promise<number | null>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve(c.exitCode);
            const timer = setTimeout(() => resolve(null), ms);
            c.once("exit", (code) => {
              clearTimeout(timer);
              resolve(code);
            });
          });

        // Without the capability the daemon must refuse: this is what makes CAP_NET_ADMIN needed.
        const bareOut = { stdout: "", stderr: "" };
        const bare = start([], bareOut);
        const bareCode = await exited(bare, 20_000);
        t.not(bareCode, 0, "without CAP_NET_ADMIN the daemon refuses to start");
        t.not(bareCode, null, "and exits instead of hanging");
        t.match(
          bareOut.stdout + bareOut.stderr,
          /TUNNAT_ERR_|CAP_NET_ADMIN|Operation not permitted/,
        );

        const out = { stdout: "", stderr: "" };
        const daemon = start(ambient, out);
        try {
          await waitFor(
            `the NAT address routed into ${LAB.tun}`,
            () =>
              run("ip", ["-n", NAT, "route", "show", `${LAB.natAddr}/32`]).stdout.includes(
                LAB.tun,
              ) || daemon.exitCode !== null,
            20_000,
          );
          t.equal(
            daemon.exitCode,
            null,
            `the daemon is running: ${(out.stdout + out.stderr).slice(-2000)}`,
          );
          const pid = daemon.pid ?? 0;
          const status = readFileSync(`/proc/${pid}/status`, "utf8");
          t.match(
            status,
            new RegExp(`^Uid:\\s+${DAEMON_UID}\\s+${DAEMON_UID}\\s+${DAEMON_UID}`, "m"),
            "it runs as the unprivileged uid",
          );
          t.match(status, /^CapEff:\s+0000000000001000$/m, "its only capability is CAP_NET_ADMIN");
          t.match(status, /^NoNewPrivs:\s+1$/m, "with no_new_privs");
          t.equal(
            sysctl(NAT, `net.ipv4.conf.${LAB.tun}.rp_filter`),
            "2",
            "its TUN is in loose rp_filter",
          );

          const ping = inNs(P1, "ping", "-c", "3", "-i", "0.2", "-W", "2", LAB.inet);
          t.equal(
            ping.status,
            0,
            `p1 pings the internet host through the NAT: ${ping.stdout}${ping.stderr}`,
          );
          t.match(ping.stdout, /3 received/);

          // The pings above ran synchronously: let the daemon's stdout reach us before reading it.
          await waitFor(
            "the daemon's forwarding log line",
            () => out.stdout.includes('"forwarding"'),
            5000,
          );
          const lines = out.stdout.split("\n").filter((l) => l.trim() !== "");
          t.ok(lines.length > 0, "the daemon logged");
          t.ok(
            lines.every((l) => {
              try {
                return typeof JSON.parse(l) === "object";
              } catch {
                return false;
              }
            }),
            `every log line is JSON, for journald: ${lines.slice(0, 3).join(" | ")}`,
          );
        } finally {
          daemon.kill("SIGTERM");
        }
        const code = await exited(daemon, 20_000);
        t.equal(code, 0, "SIGTERM stops it cleanly");
        t.equal(
          run("ip", ["-n", NAT, "route", "show", `${LAB.natAddr}/32`]).stdout.trim(),
          "",
          "and the unprivileged daemon removed its route",
        );
        t.equal(run("ip", ["-n", NAT, "link", "show", LAB.tun]).status === 0, false, "and its TUN");
      },
    );
  },
);
