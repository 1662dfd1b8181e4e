/**
 * The live fuzz of issue 8 ("Beyond the fixes"): the real daemon in the namespace lab, fed random
 * and mutated IPv4 packets in both directions (from p1 towards the internet, and from the internet
 * host to the NAT address) by tcpreplay at a fixed rate, from pcap files written by
 * test/netns/helpers/fuzzgen.py, alongside repeated TCP downloads (sha256 checked at p1) and pings.
 * At the end it checks: the daemon is alive, /healthz and /readyz answer 200, RSS stayed bounded,
 * every download is byte-exact, every packet the NAT emitted towards the "valid" destination (the
 * packets that entered with correct checksums) has correct checksums (tshark on a sample), nothing
 * left with a source that is neither the NAT address nor an outside one, and the counters account
 * for what was sent: kernel drops before the TUN + the TUN queue's drops + what the daemon read,
 * and what the daemon read = its drops by reason + what it wrote.
 *
 * Used by test/fuzz/live.test.ts (`npm run fuzz:live`, default 10,000,000 packets) and by
 * test/netns/fuzz-live.test.ts (a short bounded run in the netns suite). Namespaces `<prefix>-<pid>-*`
 * are removed in teardown; every packet goes to an address of those namespaces; the replay is
 * bounded by packet count and by a time limit.
 */
import { readFileSync, writeFileSync } from "node:fs";
import type { Test } from "tap";
import { HELPERS, Lab, scapyPython, sleep } from "../netns/helpers/lab.js";

export interface LiveFuzzOptions {
  /** Packets to send in all (half per direction). */
  packets: number;
  /** Send rate per direction, packets per second. */
  pps: number;
  /** Bytes of each TCP download (repeated until the replay ends). */
  transferBytes: number;
  /** Distinct packets generated per direction (the pcap is replayed in a loop). */
  uniquePerSide: number;
  seed: number;
  prefix: string;
  /** Write the result (JSON) here as well. */
  reportFile?: string;
}

export interface LiveFuzzResult {
  sent: { inside: number; outside: number; total: number };
  seconds: number;
  ratePps: number;
  generated: Record<string, Record<string, number>>;
  kernel: Record<string, number>;
  tun: { delivered: number; queueDropped: number };
  daemon: {
    read: number;
    written: number;
    drops: Record<string, number>;
    dropsTotal: number;
    repliesGenerated: number;
    fragmentsHeld: number;
    writeDrops: number;
  };
  /** Drops of the kernel forward filter (tunnat_guard_dropped_packets_total), by reason. */
  guard: Record<string, number>;
  leftUntranslated: number;
  transfers: { count: number; bytes: number; exact: number };
  pings: { sent: number; received: number };
  rssKiB: { before: number; after: number; max: number };
  checksums: { sampled: number; bad: number };
  health: { healthz: number; readyz: number; alive: boolean };
}

/** Parse `--packets N` (and --pps, --transfer-bytes, --seed) from argv over the defaults. */
export function parseArgs(argv: string[], defaults: LiveFuzzOptions): LiveFuzzOptions {
  const o = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const inline = arg.includes("=");
    const [k, v] = inline ? (arg.split("=", 2) as [string, string]) : [arg, argv[i + 1] ?? ""];
    const n = Number(v);
    const take = () => {
      if (!inline) i++;
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${k} needs a positive number, got ${v}`);
      return Math.floor(n);
    };
    if (k === "--packets") o.packets = take();
    else if (k === "--pps") o.pps = take();
    else if (k === "--transfer-bytes") o.transferBytes = take();
    else if (k === "--unique") o.uniquePerSide = take();
    else if (k === "--seed") o.seed = take();
    else if (k === "--report") {
      o.reportFile = v;
      if (!inline) i++;
    }
  }
  return o;
}

function metric(text: string, name: string, label?: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (!(rest.startsWith(" ") || rest.startsWith("{"))) continue;
    if (label && !rest.includes(label)) continue;
    sum += Number(rest.split(/\s+/).pop());
  }
  return sum;
}

function dropsByReason(
  text: string,
  series = "tunnat_packets_dropped_total",
): Record<string, number> {
  const d: Record<string, number> = {};
  for (const m of text.matchAll(new RegExp(`^${series}\\{reason="([^"]+)"\\}\\s+(\\S+)`, "gm")))
    d[m[1] ?? ""] = Number(m[2]);
  return d;
}

/** Positive differences per key, b - a. */
function diff(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0) > 0) d[k] = v - (a[k] ?? 0);
  return d;
}

export async function liveFuzz(t: Test, opts: LiveFuzzOptions): Promise<LiveFuzzResult | null> {
  const lab = await Lab.up(opts.prefix);
  t.teardown(() => lab.down());
  const [valid, other] = lab.inet as [string, string];
  const nat = lab.natAddress;
  const py = scapyPython() ?? "/usr/bin/python3";
  const tun = lab.lab.daemon.tun;
  try {
    await lab.startDaemon([]);
  } catch (e) {
    t.fail(`the daemon starts: ${String(e)}`);
    return null;
  }
  const pid = lab.daemon?.child.pid ?? 0;
  const rss = () => {
    try {
      return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      return 0;
    }
  };

  // --- packets
  const perSide = Math.ceil(opts.packets / 2);
  const unique = Math.min(perSide, opts.uniquePerSide);
  const loops = Math.ceil(perSide / unique);
  const gen = await lab.exec(
    "nat",
    [
      py,
      `${HELPERS}/fuzzgen.py`,
      lab.tmp,
      String(unique),
      String(opts.seed),
      await lab.mac("p1", "eth0"),
      await lab.mac("nat", lab.lab.inside.bridge),
      await lab.mac("inet", "eth0"),
      await lab.mac("nat", lab.lab.outside.natInterface),
      `${lab.p1},${lab.p2}`,
      valid,
      other,
      nat,
      lab.inet.join(","),
    ],
    { timeoutMs: 1_800_000 },
  );
  t.equal(gen.code, 0, `fuzzgen wrote the pcaps: ${gen.stderr.slice(-500)}`);
  const generated = JSON.parse(gen.stdout.trim() || "{}") as Record<string, Record<string, number>>;

  // --- counters
  const snmp = async () => {
    const text = await lab.sh("nat", ["cat", "/proc/net/snmp"]);
    const lines = text.split("\n").filter((l) => l.startsWith("Ip:"));
    const keys = (lines[0] ?? "").split(/\s+/).slice(1);
    const vals = (lines[1] ?? "").split(/\s+/).slice(1).map(Number);
    return Object.fromEntries(keys.map((k, i) => [k, vals[i] ?? 0])) as Record<string, number>;
  };
  const tunStats = async () => {
    const j = JSON.parse(await lab.sh("nat", ["ip", "-s", "-j", "link", "show", tun])) as {
      stats64: { tx: { packets: number; dropped: number } };
    }[];
    return j[0]?.stats64.tx ?? { packets: 0, dropped: 0 };
  };
  const m0 = await lab.metricsText();
  const k0 = await snmp();
  const tun0 = await tunStats();
  const rssBefore = rss();
  let rssMax = rssBefore;

  // --- background: downloads from `other` to p1 (sha256 checked), pings, captures
  const blob = `${lab.tmp}/blob`;
  const sha = (
    await lab.sh("inet", [
      "sh",
      "-c",
      `head -c ${opts.transferBytes} /dev/urandom > ${blob} && sha256sum ${blob}`,
    ])
  ).split(" ")[0];
  const sample = lab.spawn("inet", [
    "tcpdump",
    "--immediate-mode",
    "-Z",
    "root",
    "-n",
    "-i",
    "eth0",
    "-c",
    "50000",
    "-w",
    `${lab.tmp}/emitted.pcap`,
    `ip and src host ${nat} and dst host ${valid}`,
  ]);
  // Only what arrives from the gateway: the internet host's own fuzz (with random sources) leaves
  // through the same interface.
  const raw = lab.spawn("inet", [
    "tcpdump",
    "--immediate-mode",
    "-Z",
    "root",
    "-n",
    "-i",
    "eth0",
    "-Q",
    "in",
    "-s",
    "64",
    "-w",
    `${lab.tmp}/raw.pcap`,
    `ip and not src net ${lab.lab.outside.prefix}`,
  ]);
  await sleep(1000);
  let replaying = true;
  const transfers = { count: 0, bytes: 0, exact: 0 };
  const downloads = (async () => {
    let port = 5001;
    while (replaying) {
      port = port === 5001 ? 5002 : 5001;
      const srv = lab.spawn("inet", [
        "socat",
        "-u",
        `OPEN:${blob}`,
        `TCP-LISTEN:${port},bind=${other},reuseaddr`,
      ]);
      for (let i = 0; i < 50; i++) {
        const r = await lab.exec("inet", ["ss", "-lntH", `sport = :${port}`]);
        if (r.stdout.trim()) break;
        await sleep(50);
      }
      const r = await lab.exec(
        "p1",
        ["bash", "-c", `socat -u TCP:${other}:${port} STDOUT | tee >(wc -c >&2) | sha256sum`],
        { timeoutMs: 600_000 },
      );
      await srv.stop(500);
      transfers.count++;
      transfers.bytes += Number(/(\d+)\s*$/.exec(r.stderr.trim())?.[1] ?? 0);
      if (r.stdout.split(" ")[0] === sha) transfers.exact++;
    }
  })();
  const ping = lab.spawn("p1", ["ping", "-i", "0.2", "-W", "1", other]);
  const rssTimer = setInterval(() => {
    rssMax = Math.max(rssMax, rss());
  }, 1000);

  // --- the replay, both directions at once
  const limitMs = Math.ceil((perSide / opts.pps) * 3000) + 120_000;
  const t0 = Date.now();
  const replay = (role: "p1" | "inet", file: string) =>
    lab.exec(
      role,
      [
        "tcpreplay",
        "-i",
        "eth0",
        "--pps",
        String(opts.pps),
        "--loop",
        String(loops),
        "--limit",
        String(perSide),
        "--preload-pcap",
        file,
      ],
      { timeoutMs: limitMs },
    );
  const [rin, rout] = await Promise.all([
    replay("p1", `${lab.tmp}/inside.pcap`),
    replay("inet", `${lab.tmp}/outside.pcap`),
  ]);
  const seconds = (Date.now() - t0) / 1000;
  replaying = false;
  await downloads;
  clearInterval(rssTimer);
  // SIGINT: ping prints its summary (SIGTERM would not).
  ping.child.kill("SIGINT");
  await Promise.race([ping.exited, sleep(2000)]);
  await ping.stop(500);
  const actual = (r: { stdout: string }) =>
    Number(/Actual: (\d+) packets/.exec(r.stdout)?.[1] ?? 0);
  t.equal(rin.code, 0, `tcpreplay from p1 finished: ${rin.stderr.slice(-300)}`);
  t.equal(rout.code, 0, `tcpreplay from inet finished: ${rout.stderr.slice(-300)}`);
  await sleep(2000);

  // --- after
  const alive = lab.daemon?.child.exitCode === null;
  t.ok(alive, "the daemon is alive");
  const code = async (path: string) => {
    const r = await lab.exec("nat", [
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-m",
      "3",
      "-w",
      "%{http_code}",
      `http://${lab.lab.daemon.metrics}${path}`,
    ]);
    return Number(r.stdout) || 0;
  };
  const health = { healthz: await code("/healthz"), readyz: await code("/readyz"), alive };
  t.equal(health.healthz, 200, "/healthz answers 200");
  t.equal(health.readyz, 200, "/readyz answers 200");
  const rssAfter = rss();
  rssMax = Math.max(rssMax, rssAfter);
  const m1 = await lab.metricsText();
  const k1 = await snmp();
  const tun1 = await tunStats();
  await sample.stop(1000);
  await raw.stop(1000);

  const pingOut = ping.out();
  const pings = {
    sent: Number(/(\d+) packets transmitted/.exec(pingOut)?.[1] ?? 0),
    received: Number(/(\d+) received/.exec(pingOut)?.[1] ?? 0),
  };
  // Checksums of what the NAT emitted towards the valid destination (IP, TCP, UDP, ICMP).
  const ts = await lab.exec(
    "inet",
    [
      "tshark",
      "-n",
      "-r",
      `${lab.tmp}/emitted.pcap`,
      "-o",
      "ip.defragment:FALSE",
      "-o",
      "ip.check_checksum:TRUE",
      "-o",
      "tcp.check_checksum:TRUE",
      "-o",
      "udp.check_checksum:TRUE",
      "-T",
      "fields",
      "-e",
      "ip.checksum.status",
      "-e",
      "tcp.checksum.status",
      "-e",
      "udp.checksum.status",
      "-e",
      "icmp.checksum.status",
    ],
    { timeoutMs: 300_000 },
  );
  const rows = ts.stdout.split("\n").filter((l) => l.trim() !== "");
  // Status 0 is "Bad" (1 good, 2 unverified); the first ip.checksum.status is the outer header.
  const bad = rows.filter((l) => {
    const [ipS, tcpS, udpS, icmpS] = l.split("\t");
    return (
      (ipS ?? "").split(",")[0] === "0" ||
      (tcpS ?? "").split(",")[0] === "0" ||
      (udpS ?? "").split(",")[0] === "0" ||
      (icmpS ?? "").split(",")[0] === "0"
    );
  }).length;
  const leftUntranslated = (await lab.readPcap(`${lab.tmp}/raw.pcap`)).length;

  const drops = diff(dropsByReason(m0), dropsByReason(m1));
  // The kernel forward filter of issue 8 (if installed) counts its own drops by reason.
  const G = "tunnat_guard_dropped_packets_total";
  const guard = diff(dropsByReason(m0, G), dropsByReason(m1, G));
  const delta = (name: string) => metric(m1, name) - metric(m0, name);
  const kernel: Record<string, number> = {};
  for (const k of [
    "InReceives",
    "InHdrErrors",
    "InAddrErrors",
    "InUnknownProtos",
    "InDiscards",
    "InDelivers",
    "ForwDatagrams",
    "OutNoRoutes",
    "ReasmFails",
  ])
    kernel[k] = (k1[k] ?? 0) - (k0[k] ?? 0);
  const sentIn = actual(rin);
  const sentOut = actual(rout);
  const result: LiveFuzzResult = {
    sent: { inside: sentIn, outside: sentOut, total: sentIn + sentOut },
    seconds,
    ratePps: Math.round((sentIn + sentOut) / seconds),
    generated,
    kernel,
    tun: {
      delivered: tun1.packets - tun0.packets,
      queueDropped: tun1.dropped - tun0.dropped,
    },
    daemon: {
      read: delta("tunnat_datapath_packets_read_total"),
      written: delta("tunnat_datapath_packets_written_total"),
      drops,
      dropsTotal: Object.values(drops).reduce((a, b) => a + b, 0),
      repliesGenerated: delta("tunnat_replies_generated_total"),
      fragmentsHeld: delta("tunnat_fragments_held_total"),
      writeDrops: delta("tunnat_datapath_write_drops_total"),
    },
    guard,
    leftUntranslated,
    transfers,
    pings,
    rssKiB: { before: rssBefore, after: rssAfter, max: rssMax },
    checksums: { sampled: rows.length, bad },
    health,
  };
  t.comment(JSON.stringify(result));
  if (opts.reportFile) writeFileSync(opts.reportFile, `${JSON.stringify(result, null, 2)}\n`);

  t.ok(result.sent.total >= opts.packets * 0.99, `sent ${result.sent.total} packets`);
  t.ok(transfers.count >= 1, `${transfers.count} downloads ran`);
  t.equal(transfers.exact, transfers.count, "every download arrived byte-exact (sha256)");
  t.ok(pings.received > 0, `pings answered (${pings.received}/${pings.sent})`);
  t.ok(
    rssAfter <= rssBefore * 1.5 + 64 * 1024,
    `RSS bounded: ${rssBefore} KiB before, ${rssAfter} KiB after, ${rssMax} KiB at most`,
  );
  t.ok(rows.length > 0, `sampled ${rows.length} packets the NAT emitted`);
  t.equal(bad, 0, "every sampled packet the NAT emitted has correct checksums");
  t.equal(
    leftUntranslated,
    0,
    "nothing left the gateway with a source that is neither the NAT address nor an outside one",
  );
  // Accounting. What entered the nat namespace is dropped by its kernel (bad headers, no route),
  // forwarded by the kernel, queued to the TUN, or dropped by the TUN queue; the daemon read every
  // packet the TUN delivered; each read packet is dropped by reason or written (held fragments
  // are written when released, or dropped when their time runs out).
  const d = result.daemon;
  const kernelDrops =
    (kernel.InHdrErrors ?? 0) +
    (kernel.InAddrErrors ?? 0) +
    (kernel.InUnknownProtos ?? 0) +
    (kernel.InDiscards ?? 0) +
    (kernel.OutNoRoutes ?? 0);
  const guardDrops = Object.values(guard).reduce((a, b) => a + b, 0);
  const found = kernelDrops + guardDrops + (kernel.ForwDatagrams ?? 0) + result.tun.queueDropped;
  t.ok(
    found >= result.sent.total * 0.99,
    `every packet sent is accounted for: kernel drops ${kernelDrops} + forward filter drops ${guardDrops} + forwarded ${kernel.ForwDatagrams} + TUN queue drops ${result.tun.queueDropped} >= ${result.sent.total}`,
  );
  t.ok(
    Math.abs(d.read - result.tun.delivered) <= Math.max(100, result.tun.delivered * 0.001),
    `the daemon read what the TUN delivered (${d.read} vs ${result.tun.delivered})`,
  );
  t.ok(
    Math.abs(d.read - (d.dropsTotal + d.written)) <=
      d.fragmentsHeld + d.repliesGenerated + Math.max(100, d.read * 0.001),
    `what the daemon read (${d.read}) = its drops by reason (${d.dropsTotal}) + what it wrote (${d.written})`,
  );
  t.ok(
    result.tun.queueDropped === 0 || metricMentioningTunDrops(m1) >= result.tun.queueDropped,
    `the TUN queue's ${result.tun.queueDropped} drops appear in tunnat's metrics (issue 8 item 9)`,
  );
  return result;
}

/** The largest tunnat series counting TUN queue drops (see security.test.ts), or -1. */
function metricMentioningTunDrops(text: string): number {
  let best = -1;
  for (const line of text.split("\n")) {
    const m = /^tunnat_(\w+)(\{[^}]*\})?\s+([0-9.e+]+)$/.exec(line);
    const name = m?.[1] ?? "";
    if (m && /(^|_)tun_/.test(name) && /drop/.test(name)) best = Math.max(best, Number(m[3]));
  }
  return best;
}
