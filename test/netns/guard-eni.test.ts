/**
 * The guard in single-ENI mode (inside interface = outside interface, as on EC2 with one ENI):
 * the real daemon in a namespace that plays the instance, on one L2 segment with a private host
 * and the "VPC router", which leads to an internet host.
 *
 *   tneni-<pid>-p     eth0 10.0.1.5/24, default via 172.31.0.10 (on-link) ─┐
 *   tneni-<pid>-gw    eni0 172.31.0.10/20 [tunnat0], NAT 172.31.0.20 ─────┼─ bridge in tneni-<pid>-sw
 *   tneni-<pid>-r     r0 172.31.0.1/20 ─────────────────────────────────────┘
 *                     r1 198.51.100.1/24 ──veth── tneni-<pid>-inet eth0 198.51.100.10/24
 *
 * Outbound NAT works and replies from the internet, which arrive on eni0 like everything else,
 * reach the private host through the TUN. A router that sends the inside prefix to the instance
 * (routed-around inbound) reaches nothing; a private host's spoofed sources do not leave. The
 * addresses are this test's own (RFC 1918 / RFC 5737). Needs root, hping3, scapy, tcpdump, nft.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { BIN, missing, scapyPython, sleep } from "./helpers/lab.js";

const reason = missing(["hping3", "scapy", "tcpdump", "nft"]);
if (reason) t.plan(0, reason);
else {
  const NS = {
    p: `tneni-${process.pid}-p`,
    gw: `tneni-${process.pid}-gw`,
    r: `tneni-${process.pid}-r`,
    inet: `tneni-${process.pid}-inet`,
    sw: `tneni-${process.pid}-sw`,
  };
  const P = "10.0.1.5";
  const INSIDE = "10.0.1.0/24";
  const GW = "172.31.0.10";
  const NAT = "172.31.0.20";
  const ROUTER = "172.31.0.1";
  const INET = "198.51.100.10";
  const tmp = mkdtempSync(join(tmpdir(), "tunnat-eni-"));
  const procs: ChildProcess[] = [];
  const py = scapyPython() ?? "python3";

  const sh = (...a: string[]) =>
    execFileSync(a[0] ?? "", a.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const ip = (ns: string, ...a: string[]) => sh("ip", "-n", ns, ...a);
  const inNs = (ns: string, ...a: string[]) => sh("ip", "netns", "exec", ns, ...a);
  const tryNs = (ns: string, ...a: string[]): { code: number; out: string } => {
    try {
      return { code: 0, out: inNs(ns, ...a) };
    } catch (e) {
      const x = e as { status?: number; stdout?: string };
      return { code: x.status ?? 1, out: x.stdout ?? "" };
    }
  };
  const cleanup = () => {
    for (const c of procs) if (c.exitCode === null) c.kill("SIGKILL");
    for (const n of Object.values(NS))
      try {
        sh("ip", "netns", "del", n);
      } catch {
        // not there
      }
    rmSync(tmp, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  t.teardown(cleanup);

  for (const n of Object.values(NS)) {
    sh("ip", "netns", "add", n);
    ip(n, "link", "set", "lo", "up");
  }
  ip(NS.sw, "link", "add", "vpc", "type", "bridge");
  ip(NS.sw, "link", "set", "vpc", "up");
  for (const [n, dev] of [
    [NS.p, "eth0"],
    [NS.gw, "eni0"],
    [NS.r, "r0"],
  ] as const) {
    ip(NS.sw, "link", "add", `s-${dev}`, "type", "veth", "peer", "name", dev, "netns", n);
    ip(NS.sw, "link", "set", `s-${dev}`, "master", "vpc", "up");
    ip(n, "link", "set", dev, "up");
  }
  ip(NS.p, "addr", "add", `${P}/24`, "dev", "eth0");
  ip(NS.p, "route", "add", GW, "dev", "eth0");
  ip(NS.p, "route", "add", "default", "via", GW);
  ip(NS.gw, "addr", "add", `${GW}/20`, "dev", "eni0");
  ip(NS.gw, "route", "add", INSIDE, "dev", "eni0");
  ip(NS.gw, "route", "add", "default", "via", ROUTER);
  inNs(NS.gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1");
  ip(NS.r, "addr", "add", `${ROUTER}/20`, "dev", "r0");
  ip(NS.r, "link", "add", "r1", "type", "veth", "peer", "name", "eth0", "netns", NS.inet);
  ip(NS.r, "addr", "add", "198.51.100.1/24", "dev", "r1");
  ip(NS.r, "link", "set", "r1", "up");
  inNs(NS.r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1");
  ip(NS.inet, "addr", "add", `${INET}/24`, "dev", "eth0");
  ip(NS.inet, "link", "set", "eth0", "up");
  ip(NS.inet, "route", "add", "default", "via", "198.51.100.1");

  const ctl = join(tmp, "eni.sock");
  const daemon = spawn(
    "ip",
    [
      "netns",
      "exec",
      NS.gw,
      process.execPath,
      BIN,
      "run",
      "--inside",
      INSIDE,
      "--inside-interface",
      "eni0",
      "--outside-interface",
      "eni0",
      "--nat-address",
      NAT,
      "--tun",
      "tunnat0",
      "--metrics",
      "127.0.0.1:9469",
      "--control-socket",
      ctl,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  procs.push(daemon);
  let log = "";
  daemon.stdout?.on("data", (b: Buffer) => (log += b.toString()));
  daemon.stderr?.on("data", (b: Buffer) => (log += b.toString()));
  let up = false;
  for (let i = 0; i < 100 && !up && daemon.exitCode === null; i++) {
    up = tryNs(NS.gw, "curl", "-sf", "-m", "1", "http://127.0.0.1:9469/healthz").code === 0;
    if (!up) await sleep(100);
  }

  /** The guard's counter, or -1 without a guard table. */
  const counter = (name: string): number => {
    const r = tryNs(NS.gw, "nft", "-j", "list", "counters", "table", "ip", "tunnat_4242");
    if (r.code !== 0) return -1;
    const j = JSON.parse(
      inNs(NS.gw, "nft", "-j", "list", "counters", "table", "ip", "tunnat_4242"),
    ) as {
      nftables: { counter?: { name: string; packets: number } }[];
    };
    return j.nftables.find((o) => o.counter?.name === name)?.counter?.packets ?? -1;
  };
  /** tcpdump in `ns` on `dev`; stop() resolves with one line per packet. */
  const capture = async (ns: string, dev: string, filter: string) => {
    const file = join(tmp, `cap-${procs.length}.pcap`);
    const c = spawn(
      "ip",
      [
        "netns",
        "exec",
        ns,
        "tcpdump",
        "--immediate-mode",
        "-Z",
        "root",
        "-U",
        "-n",
        "-i",
        dev,
        "-w",
        file,
        filter,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    procs.push(c);
    let err = "";
    c.stderr?.on("data", (b: Buffer) => (err += b.toString()));
    for (let i = 0; i < 100 && !/listening on/.test(err); i++) await sleep(50);
    return async () => {
      await sleep(200);
      c.kill("SIGTERM");
      await new Promise((r) => c.once("exit", r));
      return sh("tcpdump", "-n", "-r", file)
        .split("\n")
        .filter((l) => /^\d/.test(l));
    };
  };

  t.test("single ENI: the daemon forwards, replies come back through the TUN", async (t) => {
    t.ok(up, `the daemon is healthy: ${log.slice(-1500)}`);
    const r = tryNs(NS.p, "ping", "-c", "3", "-i", "0.2", "-W", "2", INET);
    t.equal(r.code, 0, r.out);
    t.match(tryNs(NS.gw, "nft", "list", "table", "ip", "tunnat_4242").out, /oifname != "tunnat0"/);
  });

  t.test(
    "single ENI: a router sending the inside prefix to the instance reaches nothing",
    async (t) => {
      ip(NS.r, "route", "add", INSIDE, "via", GW);
      const before = counter("routed_inbound");
      const stop = await capture(NS.p, "eth0", `ip and src host ${INET}`);
      tryNs(NS.inet, "ping", "-c", "3", "-i", "0.2", "-W", "1", P);
      tryNs(NS.inet, "hping3", "-S", "-p", "22", "-c", "3", "-i", "u200000", P);
      tryNs(NS.inet, "hping3", "--udp", "-p", "5353", "-c", "3", "-i", "u200000", P);
      t.same(await stop(), [], "nothing from the internet host reached the private host");
      t.ok(before >= 0 && counter("routed_inbound") >= before + 9, "counted as routed_inbound");
      ip(NS.r, "route", "del", INSIDE, "via", GW);
    },
  );

  t.test("single ENI: spoofed sources from the private host do not leave", async (t) => {
    const before = counter("spoofed_source");
    const stop = await capture(NS.inet, "eth0", "udp dst port 9999");
    const script = [
      "from scapy.all import IP, UDP, Raw, send",
      `send(IP(src="${NAT}", dst="${INET}")/UDP(sport=40000, dport=9999)/Raw(b"nat-src"), verbose=0)`,
      `send(IP(src="192.0.2.55", dst="${INET}")/UDP(sport=40001, dport=9999)/Raw(b"foreign"), verbose=0)`,
    ].join("\n");
    t.equal(tryNs(NS.p, py, "-c", script).code, 0);
    t.same(await stop(), [], "neither left towards the internet");
    t.ok(before >= 0 && counter("spoofed_source") >= before + 2, "both counted as spoofed_source");
  });

  t.test("stop", async (t) => {
    daemon.kill("SIGTERM");
    const code = await new Promise<number | null>((r) =>
      daemon.exitCode !== null ? r(daemon.exitCode) : daemon.once("exit", (c) => r(c)),
    );
    t.equal(code, 0);
  });
}
