/**
 * NAT behaviour checks of ../shared CONFORMANCE.md against real third-party peers, with the real
 * daemon in the namespace lab of lab/README.md: coturn's turnserver + turnutils_natdiscovery
 * (RFC 5780 discovery: RFC 4787 REQ-1, REQ-8, REQ-9), an nftables reject (RFC 5382 REQ-9),
 * traceroute (RFC 5508 REQ-10 / the TTL restore), iputils ping -e (RFC 5508 REQ-1) and tshark's
 * checksum validation (RFC 5508 REQ-4, and every rewritten checksum).
 *
 * Needs root and the tools each test names; a test whose tools are missing is skipped naming them.
 * Namespaces are `tnconf-<pid>-*`, removed in teardown even on failure.
 *
 * Peer notes (coturn's are in helpers/turn.ts):
 * - The veths offload checksums (CHECKSUM_PARTIAL): a capture shows the sender's unfinished
 *   checksums as bad. The checksum test turns transmit offload off on the end hosts, so every
 *   packet carries a full checksum and a bad one can only come from a translation.
 */
import { execFileSync } from "node:child_process";
import t, { type Test } from "tap";
import { Lab, missing, scapyPython, sleep } from "./helpers/lab.js";
import { reflexiveAddrs, turnPeer } from "./helpers/turn.js";

function lacking(tools: string[]): string | false {
  for (const tool of tools) {
    if (tool === "scapy") {
      if (!scapyPython()) return "needs python3 with scapy";
      continue;
    }
    try {
      execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
    } catch {
      return `needs ${tool} on PATH`;
    }
  }
  return false;
}

const reason = missing(["tcpdump", "socat"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnconf");
  t.teardown(() => lab.down());
  const [inet, inet2] = lab.inet as [string, string];
  const nat = lab.natAddress;
  const esc = (s: string) => s.replace(/\./g, "\\.");

  /** Start the daemon with these flags; returns false (after a failed assertion) if it won't. */
  async function daemon(t: Test, flags: string[]): Promise<boolean> {
    try {
      await lab.startDaemon(flags);
      return true;
    } catch (e) {
      t.fail(`the daemon starts with ${flags.join(" ") || "default flags"}: ${String(e)}`);
      return false;
    }
  }

  // coturn on inet with both addresses (helpers/turn.ts).
  const turnSkip = lacking(["turnserver", "turnutils_natdiscovery", "ss"]);
  const turn = turnPeer(lab);
  const startTurn = turn.start;
  const natdiscovery = turn.natdiscovery;

  t.test("the daemon starts with the default (address-and-port-dependent) filtering", async (t) => {
    t.ok(await daemon(t, []));
  });

  t.test(
    "RFC 4787 REQ-1: turnutils_natdiscovery -m finds endpoint-independent mapping, one outside port for both server addresses",
    { skip: turnSkip },
    async (t) => {
      t.ok(await startTurn(), "turnserver listens on both addresses and the alternate port");
      const r = await natdiscovery("-m");
      t.match(r.stdout, /NAT with Endpoint Independent Mapping!/, r.stdout);
      const refl = reflexiveAddrs(r.stdout);
      t.ok(refl.length >= 2, "two responses, one per server address");
      t.same(new Set(refl).size, 1, `the same external address for both: ${refl[0]}`);
      t.match(
        refl[0] ?? "",
        new RegExp(`^${esc(nat)}:`),
        "the external address is the NAT address",
      );
    },
  );

  t.test(
    "RFC 4787 REQ-8: natdiscovery -f reports address and port dependent filtering for the default --filtering",
    { skip: turnSkip },
    async (t) => {
      t.ok(await startTurn());
      const r = await natdiscovery("-f");
      t.match(r.stdout, /NAT with Address and Port Dependent Filtering!/, r.stdout);
    },
  );

  t.test(
    "RFC 5382 REQ-9: an ICMP port unreachable for p1's SYN makes its connect fail with Connection refused at once",
    { skip: lacking(["nft"]) },
    async (t) => {
      // On inet, not in any shared namespace: reject port 81 with ICMP 3/3 instead of an RST.
      await lab.sh("inet", ["nft", "add", "table", "ip", "tnconf"]);
      await lab.sh("inet", [
        "nft",
        "add",
        "chain",
        "ip",
        "tnconf",
        "input",
        "{ type filter hook input priority 0; }",
      ]);
      await lab.sh("inet", [
        "nft",
        "add",
        "rule",
        "ip",
        "tnconf",
        "input",
        "tcp",
        "dport",
        "81",
        "reject",
        "with",
        "icmp",
        "type",
        "port-unreachable",
      ]);
      const cap = await lab.capture(
        "p1",
        "eth0",
        `(icmp and src host ${inet}) or (tcp dst port 81 and tcp[tcpflags] & tcp-syn != 0)`,
      );
      const r = await lab.exec(
        "p1",
        ["socat", "-T", "5", "-", `TCP:${inet}:81,connect-timeout=5`],
        { input: "", timeoutMs: 10_000 },
      );
      await cap.stop();
      t.not(r.code, 0);
      t.match(r.stderr, /Connection refused/, r.stderr);
      // "At once": the first SYN's ICMP error did it, without a retransmission (1 s RTO); a lost
      // ICMP would end in the 5 s connect timeout instead.
      t.ok(r.ms < 3000, `it failed after ${r.ms} ms`);
      const icmp = await lab.readPcap(cap.file);
      t.equal(
        icmp.filter((l) => / > [\d.]+\.81: Flags \[S\]/.test(l)).length,
        1,
        "one SYN, no retry",
      );
      t.match(
        icmp.join("\n"),
        new RegExp(`${esc(inet)} > ${esc(lab.p1)}: ICMP .*tcp port 81 unreachable`),
        "p1 got the translated ICMP 3/3 (not an RST)",
      );
    },
  );

  t.test(
    "RFC 5508 REQ-10: traceroute -n from p1 shows the nat's inside address as hop 1, exactly once",
    { skip: lacking(["traceroute"]) },
    async (t) => {
      for (const mode of [[], ["-I"], ["-T", "-p", "3478"]]) {
        const r = await lab.exec(
          "p1",
          ["traceroute", "-n", "-q", "1", "-w", "3", "-m", "6", ...mode, inet],
          { timeoutMs: 30_000 },
        );
        const label = `traceroute ${mode.join(" ") || "(UDP)"}`;
        t.equal(r.code, 0, `${label}: ${r.stderr}`);
        const hops = r.stdout
          .split("\n")
          .slice(1)
          .map((l) => /^\s*(\d+)\s+(\S+)/.exec(l))
          .filter((m): m is RegExpExecArray => m !== null)
          .map((m) => m[2]);
        t.same(hops, [lab.gateway, inet], `${label}: hops ${hops.join(", ")}`);
      }
    },
  );

  t.test(
    "RFC 5508 REQ-1: p1 and p2 pinging with the same identifier 4242 both get replies, p1 keeps one id for both servers",
    { skip: lacking(["ping"]) },
    async (t) => {
      const cap = await lab.capture("inet", "eth0", "icmp[icmptype] == icmp-echo");
      const both = await Promise.all(
        (["p1", "p2"] as const).map((h) =>
          lab.exec(h, ["ping", "-e", "4242", "-c", "3", "-i", "0.2", "-W", "2", inet]),
        ),
      );
      const second = await lab.exec("p1", ["ping", "-e", "4242", "-c", "1", "-W", "2", inet2]);
      await sleep(200);
      await cap.stop();
      t.match(both[0]?.stdout ?? "", /3 received/, "p1 got its replies");
      t.match(both[1]?.stdout ?? "", /3 received/, "p2 got its replies");
      t.match(second.stdout, /1 received/, "p1 to the second address too");
      const lines = await lab.readPcap(cap.file);
      const ids = (dst: string) =>
        new Set(
          lines
            .filter((l) => l.includes(`> ${dst}:`))
            .map((l) => /echo request, id (\d+)/.exec(l)?.[1]),
        );
      t.equal(ids(inet).size, 2, `two distinct outside ids towards ${inet}: ${[...ids(inet)]}`);
      t.ok(
        lines.every((l) => l.includes(`IP ${nat} >`)),
        "every request left from the NAT address",
      );
      const to2 = [...ids(inet2)];
      t.equal(to2.length, 1);
      t.ok(
        to2[0] && ids(inet).has(to2[0]),
        `p1's id ${to2[0]} is the same for both servers (REQ-1a)`,
      );
    },
  );

  t.test(
    "RFC 5508 REQ-4/REQ-5: tshark finds no bad IP, TCP, UDP or ICMP checksum in captures at inet and p1",
    { skip: lacking(["tshark", "ethtool", "scapy"]) },
    async (t) => {
      for (const role of ["p1", "p2", "inet"] as const)
        await lab.sh(role, ["ethtool", "-K", "eth0", "tx", "off"]);
      const atInet = await lab.capture("inet", "eth0", "ip");
      const atP1 = await lab.capture("p1", "eth0", "ip");
      // ICMP echo, UDP both ways, TCP both ways.
      await lab.exec("p1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", inet]);
      const udp = lab.spawn("inet", [
        "socat",
        `UDP-LISTEN:9100,bind=${inet},fork,reuseaddr`,
        "SYSTEM:cat",
      ]);
      const tcp = lab.spawn("inet", [
        "socat",
        `TCP-LISTEN:9101,bind=${inet},fork,reuseaddr`,
        "SYSTEM:head -c 1000000 /dev/zero",
      ]);
      // The outbound-error case (REQ-5): inet answers after p1's socket is gone, p1's kernel
      // sends ICMP 3/3 about the mapping, and tunnat must translate it with the NAT source.
      // (socat UDP-RECVFROM + SYSTEM cannot answer after a delay: its pipe is gone, "I/O error".)
      const late = lab.spawn("inet", [
        scapyPython() ?? "python3",
        "-c",
        "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" +
          "s.bind((sys.argv[1],9102)); s.settimeout(20)\n" +
          "d,a=s.recvfrom(100); time.sleep(0.5); s.sendto(b'late',a)",
        inet,
      ]);
      for (const [proto, port] of [
        ["u", 9100],
        ["t", 9101],
        ["u", 9102],
      ] as const)
        for (let i = 0; i < 50; i++) {
          if ((await lab.exec("inet", ["ss", `-ln${proto}H`, `sport = :${port}`])).stdout.trim())
            break;
          await sleep(50);
        }
      const u = await lab.exec("p1", ["socat", "-T", "1", "-", `UDP:${inet}:9100`], {
        input: "checksum\n",
      });
      t.match(u.stdout, /checksum/, "UDP echoed");
      const d = await lab.exec("p1", ["sh", "-c", `socat -u TCP:${inet}:9101 STDOUT | wc -c`]);
      t.equal(d.stdout.trim(), "1000000", "TCP download");
      await lab.exec("p1", ["sh", "-c", `head -c 300000 /dev/zero | socat -u - TCP:${inet}:9101`]);
      // Inbound errors (REQ-4): UDP to a closed port on inet, and the traceroute's probes.
      await lab.exec("p1", ["socat", "-u", "-", `UDP:${inet}:9199`], { input: "closed\n" });
      await lab.exec("p1", ["socat", "-u", "-", `UDP:${inet}:9102,sourceport=40102`], {
        input: "answer me late\n",
      });
      await lab.exec("p1", ["traceroute", "-n", "-q", "1", "-w", "1", "-m", "3", inet]);
      // A control: one UDP datagram with a wrong checksum (tunnat need not verify it), which the
      // tshark filter must flag, so that an empty answer means something.
      const gwMac = await lab.mac("nat", lab.lab.inside.bridge);
      await lab.exec("p1", [
        scapyPython() ?? "python3",
        "-c",
        "import sys\nfrom scapy.all import Ether,IP,UDP,Raw,sendp,conf\nconf.verb=0\n" +
          "sendp(Ether(dst=sys.argv[1])/IP(src=sys.argv[2],dst=sys.argv[3])/UDP(sport=41014,dport=41014,chksum=0xBEEF)/Raw(b'z'*8),iface='eth0')",
        gwMac,
        lab.p1,
        inet,
      ]);
      await sleep(1000);
      await Promise.all([atInet.stop(), atP1.stop(), udp.stop(), tcp.stop(), late.stop()]);

      const bad = async (file: string) => {
        const r = await lab.exec("inet", [
          "tshark",
          "-n",
          "-r",
          file,
          "-o",
          "ip.check_checksum:TRUE",
          "-o",
          "udp.check_checksum:TRUE",
          "-o",
          "tcp.check_checksum:TRUE",
          "-Y",
          'ip.checksum.status=="Bad"||udp.checksum.status=="Bad"||tcp.checksum.status=="Bad"||icmp.checksum.status=="Bad"',
          "-T",
          "fields",
          "-e",
          "frame.number",
          "-e",
          "ip.src",
          "-e",
          "ip.dst",
          "-e",
          "udp.dstport",
          "-e",
          "_ws.col.Info",
        ]);
        t.equal(r.code, 0, `tshark read ${file}: ${r.stderr.slice(0, 300)}`);
        return r.stdout.split("\n").filter(Boolean);
      };
      const inetPkts = await lab.readPcap(atInet.file);
      const p1Pkts = await lab.readPcap(atP1.file);
      t.ok(
        inetPkts.length > 100 && p1Pkts.length > 100,
        `captured ${inetPkts.length} and ${p1Pkts.length} packets`,
      );
      t.ok(
        inetPkts.some((l) =>
          new RegExp(`IP ${esc(nat)} > ${esc(inet)}: ICMP .*udp port \\d+ unreachable`).test(l),
        ),
        "p1's ICMP error about its mapping left from the NAT address (REQ-5c)",
      );
      t.ok(
        p1Pkts.some((l) =>
          new RegExp(`IP ${esc(inet)} > ${esc(lab.p1)}: ICMP .*udp port 9199 unreachable`).test(l),
        ),
        "inet's ICMP error reached p1 with its inner header restored (REQ-4)",
      );
      // Only what crossed the NAT counts: a host's own packets are not the NAT's doing.
      const badInet = (await bad(atInet.file)).filter((l) => l.split("\t")[1] !== inet);
      t.ok(
        badInet.length >= 1 && badInet.every((l) => l.split("\t")[3] === "41014"),
        "the control datagram is flagged",
      );
      t.same(
        badInet.filter((l) => l.split("\t")[3] !== "41014"),
        [],
        "no other bad checksum at inet",
      );
      t.same(
        (await bad(atP1.file)).filter((l) => l.split("\t")[1] !== lab.p1),
        [],
        "no bad checksum at p1",
      );
    },
  );

  t.test(
    "RFC 4787 REQ-8/REQ-9: with --filtering endpoint-independent natdiscovery reports EIF and hairpinning works from the NAT address",
    { skip: turnSkip },
    async (t) => {
      if (!(await daemon(t, ["--filtering", "endpoint-independent"]))) return;
      t.ok(await startTurn());
      const f = await natdiscovery("-f");
      t.match(f.stdout, /NAT with Endpoint Independent Filtering!/, f.stdout);
      const cap = await lab.capture("p1", "eth0", `udp and dst host ${lab.p1}`);
      const h = await natdiscovery("-H");
      await sleep(200);
      await cap.stop();
      t.match(h.stdout, /Received a request \(maybe a successful hairpinning\)/, h.stdout);
      const lines = await lab.readPcap(cap.file);
      const hairpinned = lines.filter((l) => l.includes(`IP ${nat}.`));
      t.ok(hairpinned.length > 0, "p1 received the hairpinned request from the NAT address");
      t.same(
        lines.filter(
          (l) =>
            !l.includes(`IP ${nat}.`) && !l.includes(`IP ${inet}.`) && !l.includes(`IP ${inet2}.`),
        ),
        [],
        "nothing reached p1 from a private address (REQ-9a)",
      );
    },
  );

  t.test(
    "RFC 4787 REQ-8: with --filtering address-dependent natdiscovery reports address dependent filtering",
    { skip: turnSkip },
    async (t) => {
      if (!(await daemon(t, ["--filtering", "address-dependent"]))) return;
      t.ok(await startTurn());
      const f = await natdiscovery("-f");
      t.match(f.stdout, /NAT with Address Dependent Filtering!/, f.stdout);
    },
  );
}
