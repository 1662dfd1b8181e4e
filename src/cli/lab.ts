/**
 * `tunnat lab up|down|demo`: the three-role namespace lab of docs/architecture.md §Packet path (two private hosts, the
 * NAT host, an internet host), built with iproute2 from lab/lab.json, which holds every lab
 * address (none lives in src/). Namespaces are named `<prefix>-<pid>-{p1,p2,nat,inet}` so runs
 * cannot collide; a state file under the lab's stateDir lets `down` find them. Everything the
 * lab starts runs inside its namespaces and is stopped by pid before they are deleted.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import type { Argv } from "yargs";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";
import { execCommand } from "../control/runner.js";
import { packageRoot } from "../io/package-root.js";
import { parseCidr, parseIpv4 } from "../wire/addr.js";
import type { Command } from "./command.js";
import {
  bitRate,
  bytes,
  drawLab,
  iperfTable,
  metricsTable,
  parseIperfJson,
  parsePing,
} from "./demo-story.js";

export interface LabFile {
  prefix: string;
  stateDir: string;
  inside: { prefix: string; gateway: string; bridge: string; hosts: Record<string, string> };
  outside: {
    prefix: string;
    natInterface: string;
    natInterfaceAddress: string;
    natAddress: string;
    inet: string[];
  };
  daemon: { tun: string; metrics: string };
  demo: { httpPort: number; downloadBytes: number; iperfSeconds: number };
}

export interface LabState {
  name: string;
  pid: number;
  /** Who made it: the invoking user's uid (SUDO_UID under sudo); `lab down` without --name
   * removes only the labs of this uid. */
  uid?: number;
  user?: string;
  labFile: string;
  ns: { p1: string; p2: string; nat: string; inet: string };
}

/** The user behind this run: under sudo the one who ran sudo, else the process's own. */
export function creatorUid(env: NodeJS.ProcessEnv = process.env): number {
  const sudo = Number(env.SUDO_UID);
  return Number.isInteger(sudo) && env.SUDO_UID !== undefined ? sudo : (process.getuid?.() ?? -1);
}

function creatorName(env: NodeJS.ProcessEnv = process.env): string {
  return env.SUDO_USER ?? env.USER ?? env.LOGNAME ?? String(creatorUid(env));
}

/**
 * How to run tunnat from here: `node bin/tunnat.js` inside a clone (tunnat is not on PATH there),
 * else the absolute path of the script that runs now.
 */
export function tunnatCommand(cwd = process.cwd()): string {
  const bin = join(root(), "bin", "tunnat.js");
  const rel = relative(cwd, bin);
  return `node ${rel.startsWith("..") || isAbsolute(rel) ? bin : rel}`;
}

/** The commands to try a lab, in the order they are run. */
export function labCommands(lab: LabFile, name: string, ns: LabState["ns"], cwd?: string): string {
  const t = tunnatCommand(cwd);
  const sock = join(lab.stateDir, `${name}.sock`);
  const inet = lab.outside.inet[0] ?? "";
  return [
    "next, in this order:",
    "  1. start the daemon (keeps running; stop it with Ctrl-C), in a second terminal:",
    `     ip netns exec ${ns.nat} ${t} run ${daemonArgs(lab, sock).join(" ")}`,
    "  2. send traffic through it:",
    `     ip netns exec ${ns.p1} ping -c 3 ${inet}`,
    "  3. look at it:",
    `     ip netns exec ${ns.nat} ${t} status --socket ${sock}`,
    `     ip netns exec ${ns.nat} ${t} flows --socket ${sock}`,
    `     ip netns exec ${ns.nat} ${t} stats --socket ${sock}`,
    "  4. stop the daemon (Ctrl-C), then remove the lab:",
    `     ${t} lab down --name ${name}`,
    "",
  ].join("\n");
}

/** The package root (bin/, lab/, package.json); the working directory outside the package. */
function root(): string {
  return packageRoot() ?? process.cwd();
}

function defaultLabFile(): string {
  return join(root(), "lab", "lab.json");
}

function labError(msg: string): TunnatError {
  return new TunnatError(ErrorCode.Lab, msg);
}

function readLabFile(path: string): LabFile {
  let lab: LabFile;
  try {
    lab = JSON.parse(readFileSync(path, "utf8")) as LabFile;
  } catch (e) {
    throw labError(`cannot read lab file ${path}: ${errorMessage(e)}`);
  }
  const ips = [
    lab.inside?.gateway,
    lab.outside?.natInterfaceAddress,
    lab.outside?.natAddress,
    ...Object.values(lab.inside?.hosts ?? {}),
    ...(lab.outside?.inet ?? []),
  ];
  for (const ip of ips)
    if (typeof ip !== "string" || parseIpv4(ip) < 0)
      throw labError(`lab file ${path}: bad address ${JSON.stringify(ip)}`);
  for (const p of [lab.inside.prefix, lab.outside.prefix])
    if (!parseCidr(p)) throw labError(`lab file ${path}: bad prefix ${JSON.stringify(p)}`);
  if (!lab.inside.hosts.p1 || !lab.inside.hosts.p2 || lab.outside.inet.length < 1)
    throw labError(`lab file ${path}: needs inside.hosts.p1, p2 and at least one outside.inet`);
  return lab;
}

function len(prefix: string): string {
  return prefix.split("/")[1] ?? "24";
}

async function ip(args: string[]): Promise<string> {
  return execCommand("ip", args);
}

async function nsExec(ns: string, argv: string[]): Promise<string> {
  return execCommand("ip", ["netns", "exec", ns, ...argv], 60_000);
}

/** Build the topology; on failure remove what was made. */
export async function labUp(opts: { labFile?: string; prefix?: string; print?: boolean }) {
  const labFile = resolve(opts.labFile ?? defaultLabFile());
  const lab = readLabFile(labFile);
  const prefix = opts.prefix ?? lab.prefix;
  if (!/^[a-zA-Z0-9_-]{1,20}$/.test(prefix)) throw labError(`bad lab prefix "${prefix}"`);
  const name = `${prefix}-${process.pid}`;
  const ns = { p1: `${name}-p1`, p2: `${name}-p2`, nat: `${name}-nat`, inet: `${name}-inet` };
  const state: LabState = {
    name,
    pid: process.pid,
    uid: creatorUid(),
    user: creatorName(),
    labFile,
    ns,
  };
  mkdirSync(lab.stateDir, { recursive: true, mode: 0o700 });
  const stateFile = join(lab.stateDir, `${name}.json`);
  // State first: a crash half-way still leaves `down` something to find.
  writeFileSync(stateFile, JSON.stringify(state, null, 2));
  try {
    for (const n of Object.values(ns)) {
      await ip(["netns", "add", n]);
      await ip(["-n", n, "link", "set", "lo", "up"]);
    }
    const br = lab.inside.bridge;
    const inLen = len(lab.inside.prefix);
    await ip(["-n", ns.nat, "link", "add", br, "type", "bridge"]);
    await ip(["-n", ns.nat, "addr", "add", `${lab.inside.gateway}/${inLen}`, "dev", br]);
    await ip(["-n", ns.nat, "link", "set", br, "up"]);
    for (const host of ["p1", "p2"] as const) {
      const hns = ns[host];
      const addr = lab.inside.hosts[host] ?? "";
      await ip([
        "-n",
        hns,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        `in-${host}`,
        "netns",
        ns.nat,
      ]);
      await ip(["-n", ns.nat, "link", "set", `in-${host}`, "master", br, "up"]);
      await ip(["-n", hns, "addr", "add", `${addr}/${inLen}`, "dev", "eth0"]);
      await ip(["-n", hns, "link", "set", "eth0", "up"]);
      await ip(["-n", hns, "route", "add", "default", "via", lab.inside.gateway]);
    }
    const out = lab.outside.natInterface;
    const outLen = len(lab.outside.prefix);
    await ip([
      "-n",
      ns.inet,
      "link",
      "add",
      "eth0",
      "type",
      "veth",
      "peer",
      "name",
      out,
      "netns",
      ns.nat,
    ]);
    await ip([
      "-n",
      ns.nat,
      "addr",
      "add",
      `${lab.outside.natInterfaceAddress}/${outLen}`,
      "dev",
      out,
    ]);
    await ip(["-n", ns.nat, "link", "set", out, "up"]);
    for (const a of lab.outside.inet)
      await ip(["-n", ns.inet, "addr", "add", `${a}/${outLen}`, "dev", "eth0"]);
    await ip(["-n", ns.inet, "link", "set", "eth0", "up"]);
    await nsExec(ns.nat, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    // Proxy ARP answers after a random delay of up to proxy_delay (0.8 s by default, arp_process
    // -> pneigh_enqueue); the lab answers at once so the first ping does not look slow.
    await nsExec(ns.nat, ["sysctl", "-q", "-w", `net.ipv4.neigh.${out}.proxy_delay=0`]);
  } catch (e) {
    await labDown({ state, stateFile });
    throw labError(`lab up failed (removed again): ${errorMessage(e)}`);
  }
  if (opts.print !== false) {
    process.stdout.write(
      `lab ${name} is up (state ${stateFile})\n` +
        Object.entries(ns)
          .map(([role, n]) => `  ${role.padEnd(4)} ${n}\n`)
          .join("") +
        labCommands(lab, name, ns),
    );
  }
  return { lab, state, stateFile };
}

/** The `tunnat run` flags for the lab's nat namespace. */
export function daemonArgs(lab: LabFile, controlSocket: string): string[] {
  return [
    "--inside",
    lab.inside.prefix,
    "--inside-interface",
    lab.inside.bridge,
    "--nat-address",
    lab.outside.natAddress,
    "--outside-interface",
    lab.outside.natInterface,
    "--tun",
    lab.daemon.tun,
    "--metrics",
    lab.daemon.metrics,
    "--control-socket",
    controlSocket,
  ];
}

async function killNamespacePids(n: string): Promise<void> {
  const out = await ip(["netns", "pids", n]).catch(() => "");
  for (const p of out.split(/\s+/).filter(Boolean)) {
    const pid = Number(p);
    if (pid > 1 && pid !== process.pid)
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
  }
}

/** Remove one lab (given its state) or every lab recorded in the state dir. */
export async function labDown(opts: {
  state?: LabState;
  stateFile?: string;
  name?: string;
  labFile?: string;
  print?: boolean;
  /** Whose labs to remove without --name (default: this user's, see creatorUid). */
  uid?: number;
}): Promise<string[]> {
  const removed: string[] = [];
  const targets: { state: LabState; file: string }[] = [];
  if (opts.state && opts.stateFile) targets.push({ state: opts.state, file: opts.stateFile });
  else {
    const lab = readLabFile(resolve(opts.labFile ?? defaultLabFile()));
    const files = existsSync(lab.stateDir) ? readdirSync(lab.stateDir) : [];
    const me = opts.uid ?? creatorUid();
    let others = 0;
    for (const f of files) {
      if (!f.endsWith(".json") || /\.(plumbing|guard)\.json$/.test(f)) continue;
      if (opts.name && f !== `${opts.name}.json`) continue;
      try {
        const st = JSON.parse(readFileSync(join(lab.stateDir, f), "utf8")) as LabState;
        if (!st.ns) continue;
        // Without --name, only this user's labs: others may be in use by someone else.
        if (!opts.name && st.uid !== me) {
          others++;
          continue;
        }
        targets.push({ state: st, file: join(lab.stateDir, f) });
      } catch {
        // not a lab state file
      }
    }
    if (opts.name && targets.length === 0) throw labError(`no lab named ${opts.name}`);
    if (others > 0 && opts.print !== false)
      process.stdout.write(
        `left ${others} lab(s) made by other users (or before labs recorded their maker) alone; remove one with --name\n`,
      );
    if (targets.length === 0 && others === 0 && opts.print !== false)
      process.stdout.write("no lab of yours to remove\n");
  }
  for (const { state, file } of targets) {
    const existing = (await ip(["netns", "list"]).catch(() => ""))
      .split("\n")
      .map((l) => l.split(" ")[0]);
    for (const n of Object.values(state.ns)) {
      if (!existing.includes(n)) continue;
      await killNamespacePids(n);
      await ip(["netns", "del", n]).catch(() => undefined);
      removed.push(n);
    }
    rmSync(file, { force: true });
    for (const ext of [
      ".sock",
      ".sock.plumbing.json",
      ".sock.guard.json",
      ".sock.table.state",
      ".sock.table.state.refused",
      ".daemon.log",
    ])
      rmSync(join(dirname(file), `${state.name}${ext}`), { force: true });
    if (opts.print !== false) process.stdout.write(`lab ${state.name} is down\n`);
  }
  return removed;
}

// --- demo ------------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function say(text: string): void {
  process.stdout.write(text);
}

/**
 * `lab demo`: a short story a person reads. Up the lab, start tunnat, send ping, an HTTP download
 * and iperf3 through it, show a few metrics with units (the full scrape saved to a file it names),
 * and tear everything down. It prints no hint about `lab down`: it cleans up itself.
 */
async function labDemo(opts: { labFile?: string; prefix?: string }): Promise<number> {
  const started = performance.now();
  const { lab, state, stateFile } = await labUp({ ...opts, print: false });
  const ns = state.ns;
  const children: ChildProcess[] = [];
  const tmp = mkdtempSync(join(tmpdir(), "tunnat-demo-"));
  const logFile = join(lab.stateDir, `${state.name}.daemon.log`);
  // Outside the lab's folders, which the teardown removes.
  const scrapeFile = join(tmpdir(), `tunnat-demo-${process.pid}.metrics.txt`);
  let daemon: ChildProcess | undefined;
  let tornDown = false;
  const teardown = async () => {
    if (tornDown) return;
    tornDown = true;
    if (daemon && daemon.exitCode === null && daemon.pid) {
      // SIGTERM to the daemon itself (ip netns exec execs it, so the pid is the daemon's).
      daemon.kill("SIGTERM");
      for (let i = 0; i < 30 && daemon.exitCode === null; i++) await sleep(100);
    }
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    await labDown({ state, stateFile, print: false });
    rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = () => {
    say("\ninterrupted: tearing the lab down\n");
    void teardown().then(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const inet = lab.outside.inet[0] ?? "";
    const p1 = lab.inside.hosts.p1 ?? "";
    const nat = lab.outside.natAddress;
    const bin = join(root(), "bin", "tunnat.js");
    const ctl = join(lab.stateDir, `${state.name}.sock`);
    say(
      "tunnat lab demo: a NAT gateway in network namespaces, traffic through it, what it counted.\n",
    );
    say(`\n1. The lab (namespaces ${state.name}-*)\n\n`);
    say(
      drawLab({
        insidePrefix: lab.inside.prefix,
        gateway: lab.inside.gateway,
        hosts: lab.inside.hosts,
        outsidePrefix: lab.outside.prefix,
        natInterfaceAddress: lab.outside.natInterfaceAddress,
        natAddress: nat,
        inet: lab.outside.inet,
        tun: lab.daemon.tun,
      }),
    );
    const args = ["netns", "exec", ns.nat, process.execPath, bin, "run", ...daemonArgs(lab, ctl)];
    const { openSync } = await import("node:fs");
    const fd = openSync(logFile, "w");
    const t0 = performance.now();
    daemon = spawn("ip", args, { stdio: ["ignore", fd, fd] });
    const healthz = `http://${lab.daemon.metrics}/healthz`;
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      if (daemon.exitCode !== null) break;
      up = await nsExec(ns.nat, ["curl", "-sf", "-m", "1", healthz]).then(
        () => true,
        () => false,
      );
      if (!up) await sleep(100);
    }
    if (!up) {
      await sleep(200);
      const log = existsSync(logFile)
        ? readFileSync(logFile, "utf8").split("\n").slice(-8).join("\n")
        : "";
      throw labError(`tunnat did not become healthy in 10 s; its log:\n${log}`);
    }
    say(
      `\n   tunnat run ${daemonArgs(lab, ctl).join(" ")}\n   started in the nat namespace and answered /healthz after ${((performance.now() - t0) / 1000).toFixed(1)} s.\n`,
    );

    say("\n2. What crossed\n");
    const pingOut = await nsExec(ns.p1, ["ping", "-c", "3", "-i", "0.2", "-W", "2", inet]);
    const ping = parsePing(pingOut);
    say(
      ping
        ? `\n   ping p1 -> inet ${inet}: ${ping.received} of ${ping.sent} echo requests answered, round trip ${ping.rttMinMs.toFixed(3)} / ${ping.rttAvgMs.toFixed(3)} / ${ping.rttMaxMs.toFixed(3)} ms (min / avg / max)\n`
        : `\n   ping p1 -> inet ${inet}:\n${pingOut}`,
    );

    writeFileSync(join(tmp, "blob"), Buffer.alloc(lab.demo.downloadBytes, 0x61));
    let httpLog = "";
    const http = spawn(
      "ip",
      [
        "netns",
        "exec",
        ns.inet,
        "python3",
        "-u",
        "-m",
        "http.server",
        String(lab.demo.httpPort),
        "--bind",
        inet,
        "--directory",
        tmp,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.push(http);
    http.stderr?.on("data", (b: Buffer) => (httpLog += b.toString()));
    http.stdout?.on("data", (b: Buffer) => (httpLog += b.toString()));
    const url = `http://${inet}:${lab.demo.httpPort}/blob`;
    for (let i = 0; i < 50; i++) {
      const ok = await nsExec(ns.inet, [
        "curl",
        "-sf",
        "-m",
        "1",
        "-o",
        "/dev/null",
        "-r",
        "0-0",
        url,
      ]).then(
        () => true,
        () => false,
      );
      if (ok) break;
      await sleep(100);
    }
    httpLog = "";
    const got = (
      await nsExec(ns.p1, [
        "curl",
        "-sS",
        "-m",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total} %{speed_download}",
        url,
      ])
    )
      .trim()
      .split(" ")
      .map(Number);
    await sleep(200);
    const seen = /^(\d+\.\d+\.\d+\.\d+) .*"GET \/blob/m.exec(httpLog)?.[1] ?? "(not in its log)";
    say(
      `   HTTP GET ${url} from p1: ${bytes(got[0] ?? 0)} in ${(got[1] ?? 0).toFixed(2)} s (${bitRate((got[2] ?? 0) * 8)});\n` +
        `     the server on inet saw the client as ${seen}${seen === nat ? ` (the NAT address, not p1's ${p1})` : ""}\n`,
    );

    let iperfLog = "";
    const iperfSrv = spawn("ip", ["netns", "exec", ns.inet, "iperf3", "-s", "-1", "-B", inet], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(iperfSrv);
    iperfSrv.stdout?.on("data", (b: Buffer) => (iperfLog += b.toString()));
    await sleep(300);
    const iperfJson = await nsExec(ns.p1, [
      "iperf3",
      "-c",
      inet,
      "-t",
      String(lab.demo.iperfSeconds),
      "-J",
    ]);
    await sleep(200);
    const iperf = parseIperfJson(iperfJson);
    const iperfPeer = /Accepted connection from (\d+\.\d+\.\d+\.\d+)/.exec(iperfLog)?.[1];
    say(
      `   iperf3, one TCP stream p1 -> inet for ${lab.demo.iperfSeconds} s${iperfPeer ? ` (the server saw ${iperfPeer})` : ""}:\n`,
    );
    say(iperf ? indent(iperfTable(iperf)) : "     no iperf3 summary\n");

    say("\n3. What tunnat counted (a few of its metrics)\n\n");
    const metrics = await nsExec(ns.nat, [
      "curl",
      "-sf",
      "-m",
      "2",
      `http://${lab.daemon.metrics}/metrics`,
    ]);
    writeFileSync(scrapeFile, metrics);
    say(indent(metricsTable(metrics)));
    const series = metrics.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length;
    say(`\n   The whole scrape (${series} series) is saved in ${scrapeFile}.\n`);

    await teardown();
    say(
      `\n4. Done: tunnat stopped, the namespaces are removed. The demo took ${((performance.now() - started) / 1000).toFixed(0)} s.\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`demo failed: ${errorMessage(e)}\n`);
    await teardown();
    return 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function indent(text: string): string {
  return text
    .split("\n")
    .map((l) => (l ? `  ${l}` : l))
    .join("\n");
}

const labOptions = (y: Argv) =>
  y
    .option("lab-file", { type: "string", describe: "lab description (default lab/lab.json)" })
    .option("prefix", { type: "string", describe: "namespace name prefix (default tnlab)" });

export const lab: Command = {
  command: "lab",
  describe: "the network-namespace lab (root)",
  subcommands: [
    {
      command: "up",
      describe: "create the lab namespaces and print their names",
      builder: labOptions,
      async run(a) {
        await labUp({
          labFile: a["lab-file"] as string | undefined,
          prefix: a.prefix as string | undefined,
        });
        return 0;
      },
    },
    {
      command: "down",
      describe: "remove a lab (--name), or every lab this user made",
      builder: (z) =>
        z
          .option("name", { type: "string", describe: "lab name printed by up" })
          .option("lab-file", { type: "string", describe: "lab description" }),
      async run(a) {
        await labDown({
          name: a.name as string | undefined,
          labFile: a["lab-file"] as string | undefined,
        });
        return 0;
      },
    },
    {
      command: "demo",
      describe: "up, run tunnat, send ping/HTTP/iperf3 through it, show what it counted, down",
      builder: labOptions,
      run: (a) =>
        labDemo({
          labFile: a["lab-file"] as string | undefined,
          prefix: a.prefix as string | undefined,
        }),
    },
  ],
};
