/**
 * The multi-queue TUN (`--queues 2`, src/io/queues.ts, native/mq.cc) in the namespace lab: flows
 * spread over both queues (the per-queue counters), natdiscovery still sees endpoint-independent
 * mapping and the configured filtering, hairpinning and ICMP errors work while the queues share
 * the flows, 50 MB each way arrive byte-exact, and an I/O thread that dies stops the daemon with
 * exit 1 and its plumbing removed.
 *
 * Needs root, socat, python3, sha256sum and traceroute (turnserver/turnutils_natdiscovery for the
 * RFC 4787 checks); skipped with what is missing named. Namespaces are `tnmq-<pid>-*`, removed in
 * teardown. Traffic goes only to lab addresses.
 */
import t, { type Test } from "tap";
import { BIN, Lab, missing, sleep } from "./helpers/lab.js";
import { reflexiveAddrs, turnPeer } from "./helpers/turn.js";

const reason = missing(["socat", "python3", "sha256sum", "traceroute", "ss"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnmq");
  t.teardown(() => lab.down());
  const [inet] = lab.inet as [string, string];
  const nat = lab.natAddress;
  const tmp = lab.tmp;
  const esc = (s: string) => s.replace(/\./g, "\\.");
  const lacking = (tools: string[]) => missing(tools) ?? false;

  async function daemon(t: Test, flags: string[]): Promise<boolean> {
    try {
      await lab.startDaemon(["--queues", "2", ...flags]);
      return true;
    } catch (e) {
      t.fail(`the daemon starts with --queues 2 ${flags.join(" ")}: ${String(e)}`);
      return false;
    }
  }

  /** Per-queue read/written packets from /metrics. */
  async function queuePackets(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    const text = await lab.metricsText();
    for (const m of text.matchAll(
      /^tunnat_tun_queue_packets_total\{queue="(\d+)",direction="(\w+)"\} (\d+)/gm,
    ))
      out[`${m[1]}/${m[2]}`] = Number(m[3]);
    return out;
  }

  async function listening(proto: "u" | "t", port: number): Promise<boolean> {
    for (let i = 0; i < 50; i++) {
      const r = await lab.exec("inet", ["ss", `-ln${proto}H`, `sport = :${port}`]);
      if (r.stdout.trim()) return true;
      await sleep(50);
    }
    return false;
  }

  t.test("the daemon starts with two queues, one I/O thread each", async (t) => {
    if (!(await daemon(t, []))) return;
    const q = await queuePackets();
    t.same(Object.keys(q).sort(), ["0/read", "0/written", "1/read", "1/written"]);
    const names = await lab.sh("nat", [
      "sh",
      "-c",
      `cat /proc/${lab.daemon?.child.pid}/task/*/comm`,
    ]);
    const io = names.split("\n").filter((n) => n.startsWith("tunnat-q"));
    t.same(io.sort(), ["tunnat-q0", "tunnat-q1"], "one named I/O thread per queue");
  });

  t.test("64 UDP flows spread over both queues, and every one is answered", async (t) => {
    // A bounded UDP echo on inet and 64 sockets on p1, three round trips each.
    const echo = lab.spawn("inet", [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("${inet}",9300));s.settimeout(1)
end=time.time()+30
while time.time()<end:
  try: d,a=s.recvfrom(100)
  except socket.timeout: continue
  s.sendto(d,a)`,
    ]);
    t.ok(await listening("u", 9300), "the echo server listens");
    const before = await queuePackets();
    const r = await lab.exec(
      "p1",
      [
        "python3",
        "-c",
        `import socket
ok=0
socks=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(64)]
for s in socks: s.settimeout(1)
for rnd in range(3):
  for i,s in enumerate(socks): s.sendto(b"f%d"%i,("${inet}",9300))
  for i,s in enumerate(socks):
    for _ in range(3):
      try:
        if s.recv(100)==b"f%d"%i: ok+=1
        break
      except socket.timeout: s.sendto(b"f%d"%i,("${inet}",9300))
print(ok)`,
      ],
      { timeoutMs: 30_000 },
    );
    await echo.stop(500);
    t.equal(r.stdout.trim(), "192", `every round trip answered: ${r.stderr}`);
    const after = await queuePackets();
    const d = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    t.ok(d("0/read") > 0 && d("1/read") > 0, `both queues read: ${d("0/read")}, ${d("1/read")}`);
    t.ok(d("0/written") > 0 && d("1/written") > 0, "both queues wrote");
    t.ok(d("0/read") + d("1/read") >= 384, "every datagram (out and back) was read");
    const stats = await lab.exec("nat", [
      process.execPath,
      BIN,
      "stats",
      "--socket",
      lab.controlSocket,
    ]);
    t.match(
      stats.stdout,
      /tunQueues:\n {2}queue=0 read=\d+ written=\d+/,
      "tunnat stats shows them",
    );
  });

  // coturn on inet with both addresses (helpers/turn.ts).
  const turnSkip = lacking(["turnserver", "turnutils_natdiscovery"]);
  const turn = turnPeer(lab);
  const startTurn = turn.start;
  const natdiscovery = turn.natdiscovery;

  t.test(
    "natdiscovery: endpoint-independent mapping and the default address-and-port-dependent filtering",
    { skip: turnSkip },
    async (t) => {
      t.ok(await startTurn(), "turnserver listens on both addresses");
      const m = await natdiscovery("-m");
      t.match(m.stdout, /NAT with Endpoint Independent Mapping!/, m.stdout);
      const refl = reflexiveAddrs(m.stdout);
      t.ok(refl.length >= 2, "two responses, one per server address");
      t.equal(new Set(refl).size, 1, `one external address for both: ${refl[0]}`);
      t.match(refl[0] ?? "", new RegExp(`^${esc(nat)}:`));
      const f = await natdiscovery("-f");
      t.match(f.stdout, /NAT with Address and Port Dependent Filtering!/, f.stdout);
    },
  );

  t.test("ICMP errors come back to flows of either queue", async (t) => {
    // inet answers every probe (its ICMP rate limit is per destination, and all come from the
    // NAT address); the sysctl is inet's own namespace's.
    await lab.sh("inet", ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
    const before = await queuePackets();
    // 24 UDP flows to a closed port: each must see inet's port unreachable, translated back to
    // it, as ECONNREFUSED on its connected socket. The flows hash over both queues, but every
    // error is an ICMP packet from inet to the NAT address, one hash, so all errors arrive on one
    // queue: the flows on the other queue get their error across queues.
    const r = await lab.exec(
      "p1",
      [
        "python3",
        "-c",
        `import socket
ok=0
for i in range(24):
  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1);s.connect(("${inet}",9199))
  for _ in range(3):
    try:
      s.send(b"x");s.recv(10)
    except ConnectionRefusedError:
      ok+=1;break
    except socket.timeout: pass
print(ok)`,
      ],
      { timeoutMs: 30_000 },
    );
    t.equal(r.stdout.trim(), "24", `every flow got its port unreachable ${r.stderr}`);
    const after = await queuePackets();
    const d = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    t.ok(
      d("0/read") > 0 && d("1/read") > 0,
      `both queues carried them: ${d("0/read")}, ${d("1/read")}`,
    );
    // And the gateway's own Time Exceeded for TTL 1 next to inet's port unreachable at the end.
    const tr = await lab.exec("p1", ["traceroute", "-n", "-q", "1", "-w", "3", "-m", "4", inet], {
      timeoutMs: 40_000,
    });
    t.equal(tr.code, 0, tr.stderr);
    const hops = tr.stdout
      .split("\n")
      .slice(1)
      .map((l) => /^\s*(\d+)\s+(\S+)/.exec(l)?.[2])
      .filter((h) => h !== undefined);
    t.same(hops, [lab.gateway, inet], `traceroute hops ${hops.join(", ")}`);
  });

  t.test(
    "with endpoint-independent filtering natdiscovery reports EIF and hairpinning works",
    { skip: turnSkip },
    async (t) => {
      if (!(await daemon(t, ["--filtering", "endpoint-independent"]))) return;
      t.ok(await startTurn());
      const f = await natdiscovery("-f");
      t.match(f.stdout, /NAT with Endpoint Independent Filtering!/, f.stdout);
      const h = await natdiscovery("-H");
      t.match(h.stdout, /Received a request \(maybe a successful hairpinning\)/, h.stdout);
    },
  );

  t.test("hairpinning between p1 and p2 through the NAT address, over many flows", async (t) => {
    // p2 serves UDP; p1 reaches it at the NAT address and the port p2's mapping got. The mapping
    // is made on the queue p2's first packet used; p1's 16 flows hash over both queues, so some
    // hairpin through a mapping made on the other queue.
    const echo = lab.spawn("p2", [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("${lab.p2}",9400));s.settimeout(1)
s.sendto(b"open",("${inet}",9400))
end=time.time()+20
while time.time()<end:
  try: d,a=s.recvfrom(100)
  except socket.timeout: continue
  s.sendto(d+(" from %s:%d"%a).encode(),a)`,
    ]);
    await sleep(500);
    const flows = await lab.exec("nat", [
      process.execPath,
      BIN,
      "flows",
      "--json",
      "--socket",
      lab.controlSocket,
    ]);
    const entry = flows.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map(
        (l) => JSON.parse(l) as { insideAddr?: string; insidePort?: number; outsidePort?: number },
      )
      .find((f) => f.insideAddr === lab.p2 && f.insidePort === 9400);
    const external = entry?.outsidePort;
    t.ok(external, "p2's mapping is in the table");
    if (!external) return;
    const r = await lab.exec(
      "p1",
      [
        "python3",
        "-c",
        `import socket
ok=0
for i in range(16):
  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)
  for _ in range(3):
    s.sendto(b"h%d"%i,("${nat}",${external}))
    try:
      d=s.recv(200)
      if d.startswith(b"h%d from ${nat}:"%i): ok+=1
      break
    except socket.timeout: pass
print(ok)`,
      ],
      { timeoutMs: 30_000 },
    );
    await echo.stop(500);
    t.equal(
      r.stdout.trim(),
      "16",
      `16 hairpinned flows answered, p2 saw the NAT address ${r.stderr}`,
    );
  });

  const blob = `${tmp}/blob`;
  let sha = "";
  t.test("50 MB each way arrive byte-exact", async (t) => {
    sha =
      (
        await lab.sh("inet", [
          "sh",
          "-c",
          `head -c 50000000 /dev/urandom > ${blob} && sha256sum ${blob}`,
        ])
      ).split(" ")[0] ?? "";
    t.match(sha, /^[0-9a-f]{64}$/);
    const down = lab.spawn("inet", [
      "socat",
      "-u",
      `OPEN:${blob}`,
      `TCP-LISTEN:5101,bind=${inet},reuseaddr`,
    ]);
    t.ok(await listening("t", 5101));
    const d = await lab.exec("p1", ["sh", "-c", `socat -u TCP:${inet}:5101 STDOUT | sha256sum`], {
      timeoutMs: 60_000,
    });
    t.equal(d.stdout.split(" ")[0], sha, `download sha256 matches (${d.ms} ms)`);
    await down.stop(500);
    const up = lab.spawn("inet", [
      "sh",
      "-c",
      `socat -u TCP-LISTEN:5102,bind=${inet},reuseaddr STDOUT | sha256sum > ${tmp}/up.sha`,
    ]);
    t.ok(await listening("t", 5102));
    const u = await lab.exec("p1", ["socat", "-u", `OPEN:${blob}`, `TCP:${inet}:5102`], {
      timeoutMs: 60_000,
    });
    t.equal(u.code, 0, u.stderr);
    await up.exited;
    const got = await lab.sh("inet", ["cat", `${tmp}/up.sha`]);
    t.equal(got.split(" ")[0], sha, `upload sha256 matches (${u.ms} ms)`);
  });

  t.test(
    "an I/O thread that dies stops the daemon with exit 1 and its plumbing removed",
    async (t) => {
      // The test hook of src/io/queues.ts: SIGUSR2 ends queue 1's thread as a failed syscall would.
      process.env.TUNNAT_TEST_FAULT_SIGNAL = "SIGUSR2";
      const ok = await daemon(t, []);
      delete process.env.TUNNAT_TEST_FAULT_SIGNAL;
      if (!ok) return;
      const d = lab.daemon!;
      t.match(await lab.sh("nat", ["ip", "rule"]), /lookup 4242/, "the policy rule is in place");
      d.child.kill("SIGUSR2");
      let code: number | null | undefined;
      void d.exited.then((c) => {
        code = c;
      });
      for (let i = 0; i < 50 && code === undefined; i++) await sleep(100);
      t.equal(code, 1, "exits 1 within 5 s");
      for (let i = 0; i < 30 && !/data path failed/.test(d.out()); i++) await sleep(100);
      t.match(d.out(), /queue 1: I\/O thread stopped/, "and says which thread and why");
      t.notMatch(
        await lab.sh("nat", ["ip", "route", "show", "table", "4242"]),
        /dev tunnat0/,
        "no route via the TUN left",
      );
      t.equal((await lab.sh("nat", ["ip", "neigh", "show", "proxy"])).trim(), "", "no proxy entry");
      const link = await lab.exec("nat", ["ip", "link", "show", "tunnat0"]);
      t.not(link.code, 0, "the TUN is gone");
      lab.daemon = undefined;
    },
  );
}
