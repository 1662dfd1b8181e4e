/**
 * End-to-end tests of the real daemon (`node bin/tunnat.js run`) in the namespace lab of
 * lab/README.md (issue 3 item 5): traffic from p1/p2 through tunnat in the nat namespace to
 * servers on inet. Needs root, socat, tcpdump, hping3, ping, sha256sum and python3 with scapy;
 * skipped with the name of what is missing otherwise. Namespaces are `tnit-<pid>-*`, removed in
 * teardown (and on SIGTERM/exit) even when a test fails. Traffic goes only to lab addresses.
 */
import t from "tap";
import {
  type ExecResult,
  HELPERS,
  Lab,
  missing,
  scapyPython,
  sleep,
  totalDrops,
} from "./helpers/lab.js";

const reason = missing(["socat", "tcpdump", "hping3", "ping", "sha256sum", "scapy"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnit");
  t.teardown(() => lab.down());
  const [inet] = lab.inet as [string];
  const nat = lab.natAddress;
  const insidePrefix = lab.lab.inside.prefix;
  const tmp = lab.tmp;

  let started = true;
  try {
    await lab.startDaemon();
  } catch (e) {
    started = false;
    t.fail(`the daemon starts in the lab: ${String(e)}`);
  }
  const noDaemon = started ? false : "the daemon did not start (see the failure above)";
  // Everything inet receives during the whole file, from a private address: must stay empty.
  const leak = started ? await lab.capture("inet", "eth0", `net ${insidePrefix}`) : undefined;

  /** A UDP server on inet that answers each datagram with the peer address it saw. */
  function udpEchoPeer(port: number) {
    return lab.spawn("inet", [
      "socat",
      "-d",
      "-d",
      `UDP-LISTEN:${port},bind=${inet},fork,reuseaddr`,
      'SYSTEM:read l; echo "$l from $SOCAT_PEERADDR:$SOCAT_PEERPORT"',
    ]);
  }
  /** A TCP server on inet that answers each connection with the peer address it saw. */
  function tcpEchoPeer(port: number) {
    return lab.spawn("inet", [
      "socat",
      "-d",
      "-d",
      `TCP-LISTEN:${port},bind=${inet},fork,reuseaddr`,
      'SYSTEM:read l; echo "$l from $SOCAT_PEERADDR:$SOCAT_PEERPORT"',
    ]);
  }
  /** Wait until something listens on port (proto "u" or "t") in inet; bounded. */
  async function listening(proto: "u" | "t", port: number): Promise<boolean> {
    for (let i = 0; i < 50; i++) {
      const r = await lab.exec("inet", ["ss", `-ln${proto}H`, `sport = :${port}`]);
      if (r.stdout.trim()) return true;
      await sleep(50);
    }
    return false;
  }
  const peerOf = (line: string) => /from ([\d.]+):(\d+)/.exec(line);

  t.test(
    "a ping from p1 to the internet host's address gets replies",
    { skip: noDaemon },
    async (t) => {
      const r = await lab.exec("p1", ["ping", "-c", "3", "-i", "0.2", "-W", "2", inet]);
      t.equal(r.code, 0, r.stderr);
      t.match(r.stdout, /3 packets transmitted, 3 received/);
    },
  );

  // One 50 MB random file, generated once, compared by sha256 after each direction.
  const blob = `${tmp}/blob`;
  const blobSha = async () =>
    (
      await lab.sh("inet", [
        "sh",
        "-c",
        `head -c 50000000 /dev/urandom > ${blob} && sha256sum ${blob}`,
      ])
    ).split(" ")[0] ?? "";
  let sha = "";

  t.test(
    "a 50 MB TCP download from the internet host to p1 arrives with the same sha256",
    { skip: noDaemon },
    async (t) => {
      sha = await blobSha();
      t.match(sha, /^[0-9a-f]{64}$/);
      const srv = lab.spawn("inet", [
        "socat",
        "-d",
        "-d",
        "-u",
        `OPEN:${blob}`,
        `TCP-LISTEN:5001,bind=${inet},reuseaddr`,
      ]);
      t.ok(await listening("t", 5001), "the server listens");
      const r = await lab.exec("p1", ["sh", "-c", `socat -u TCP:${inet}:5001 STDOUT | sha256sum`], {
        timeoutMs: 60_000,
      });
      t.equal(r.code, 0, r.stderr);
      t.equal(r.stdout.split(" ")[0], sha, `sha256 matches (${r.ms} ms)`);
      await srv.exited;
      t.match(
        srv.out(),
        new RegExp(`accepting connection from AF=2 ${nat.replace(/\./g, "\\.")}:`),
      );
    },
  );

  t.test(
    "a 50 MB TCP upload from p1 to the internet host arrives with the same sha256",
    { skip: noDaemon },
    async (t) => {
      if (!sha) sha = await blobSha();
      const up = `${tmp}/upload`;
      const srv = lab.spawn("inet", [
        "socat",
        "-d",
        "-d",
        "-u",
        `TCP-LISTEN:5002,bind=${inet},reuseaddr`,
        `CREATE:${up}`,
      ]);
      t.ok(await listening("t", 5002), "the server listens");
      const r = await lab.exec("p1", ["socat", "-u", `OPEN:${blob}`, `TCP:${inet}:5002`], {
        timeoutMs: 60_000,
      });
      t.equal(r.code, 0, r.stderr);
      t.equal(await srv.exited, 0, "the server finished");
      const got = (await lab.sh("inet", ["sha256sum", up])).split(" ")[0];
      t.equal(got, sha, `sha256 matches (${r.ms} ms)`);
    },
  );

  t.test("a UDP request from p1 gets its response", { skip: noDaemon }, async (t) => {
    const srv = udpEchoPeer(9000);
    t.ok(await listening("u", 9000), "the server listens");
    const r = await lab.exec("p1", ["socat", "-T", "2", "-", `UDP:${inet}:9000`], {
      input: "udp-request\n",
      timeoutMs: 10_000,
    });
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^udp-request from /, "the response came back to p1");
    await srv.stop();
  });

  t.test(
    "the server sees the NAT address, never a private one, and the internet host has no route to the private prefix",
    { skip: noDaemon },
    async (t) => {
      const srv = tcpEchoPeer(9001);
      t.ok(await listening("t", 9001));
      for (const host of ["p1", "p2"] as const) {
        const r = await lab.exec(host, ["socat", "-T", "2", "-", `TCP:${inet}:9001`], {
          input: `${host}\n`,
          timeoutMs: 10_000,
        });
        t.equal(r.code, 0, r.stderr);
        t.equal(peerOf(r.stdout)?.[1], nat, `the server saw ${host} as the NAT address`);
      }
      await srv.stop();
      const logged = [...srv.out().matchAll(/accepting connection from AF=2 ([\d.]+):/g)].map(
        (m) => m[1],
      );
      t.same(logged, [nat, nat], "the server's own log names only the NAT address");
      for (const host of [lab.p1, lab.p2]) {
        const r = await lab.exec("inet", ["ip", "route", "get", host]);
        t.not(r.code, 0, `ip route get ${host} fails in inet: ${r.stderr.trim()}`);
      }
      // The capture started before the first test: no private source reached inet all along.
      await leak?.stop();
      const leaked = leak ? await lab.readPcap(leak.file) : ["no capture"];
      t.same(leaked.slice(0, 5), [], "inet received no packet from or to a private address");
    },
  );

  t.test(
    "two private hosts using the same source port to the same server get distinct outside ports and both work",
    { skip: noDaemon },
    async (t) => {
      const u = udpEchoPeer(9002);
      const tc = tcpEchoPeer(9003);
      t.ok(await listening("u", 9002));
      t.ok(await listening("t", 9003));
      const hosts = ["p1", "p2"] as const;
      // UDP may lose a datagram on a loaded machine: ask again (the same source port keeps the
      // same mapping), up to three times; the test is about the outside ports, not about loss.
      const udpAsk = async (h: (typeof hosts)[number]) => {
        let r: ExecResult | undefined;
        for (let i = 0; i < 3 && !r?.stdout.startsWith(`${h} from `); i++)
          r = await lab.exec(h, ["socat", "-T", "2", "-", `UDP:${inet}:9002,sourceport=40000`], {
            input: `${h}\n`,
            timeoutMs: 10_000,
          });
        return r as ExecResult;
      };
      const udp = await Promise.all(hosts.map(udpAsk));
      const tcp = await Promise.all(
        hosts.map((h) =>
          lab.exec(h, ["socat", "-T", "2", "-", `TCP:${inet}:9003,sourceport=40001,reuseaddr`], {
            input: `${h}\n`,
            timeoutMs: 10_000,
          }),
        ),
      );
      for (const [proto, rs] of [
        ["UDP", udp],
        ["TCP", tcp],
      ] as const) {
        const peers = rs.map((r, i) => {
          t.equal(r.code, 0, `${proto} from ${hosts[i]} works ${r.stderr}`);
          t.match(r.stdout, new RegExp(`^${hosts[i]} from `), `${hosts[i]} got its own answer`);
          return peerOf(r.stdout);
        });
        t.equal(peers[0]?.[1], nat);
        t.equal(peers[1]?.[1], nat);
        t.ok(peers[0]?.[2] && peers[1]?.[2], `${proto}: the server logged both peer ports`);
        t.not(
          peers[0]?.[2],
          peers[1]?.[2],
          `${proto}: distinct outside ports ${peers[0]?.[2]} and ${peers[1]?.[2]}`,
        );
      }
      await Promise.all([u.stop(), tc.stop()]);
    },
  );

  t.test(
    "unsolicited TCP SYN, UDP and ping from the internet host to the NAT address are not delivered and draw no RST",
    { skip: noDaemon },
    async (t) => {
      const before = await lab.drops();
      const atP1 = await lab.capture("p1", "eth0", "ip");
      const atP2 = await lab.capture("p2", "eth0", "ip");
      // Anything the NAT address sends back to inet (an RST above all) would show here.
      const back = await lab.capture("inet", "eth0", `src host ${nat}`);
      const t0 = Date.now();
      const syn = await lab.exec("inet", [
        "hping3",
        "-S",
        "-p",
        "40000",
        "-c",
        "3",
        "-i",
        "u100000",
        nat,
      ]);
      const udp = await lab.exec("inet", [
        "hping3",
        "--udp",
        "-p",
        "40002",
        "-c",
        "3",
        "-i",
        "u100000",
        nat,
      ]);
      const ping = await lab.exec("inet", ["ping", "-c", "3", "-i", "0.2", "-W", "1", nat]);
      t.match(
        syn.stdout + syn.stderr,
        /3 packets transmitted, 0 packets received/,
        "no answer to SYNs",
      );
      t.match(
        udp.stdout + udp.stderr,
        /3 packets transmitted, 0 packets received/,
        "no answer to UDP",
      );
      t.match(ping.stdout, /3 packets transmitted, 0 received/, "no echo reply");
      // RFC 5382 REQ-4: no answer to an unsolicited SYN for at least 6 s.
      await sleep(Math.max(0, 6500 - (Date.now() - t0)));
      // A control that shows the captures work: one solicited ping from each private host.
      for (const h of ["p1", "p2"] as const)
        t.match((await lab.exec(h, ["ping", "-c", "1", "-W", "2", inet])).stdout, /1 received/);
      await Promise.all([atP1.stop(), atP2.stop(), back.stop()]);
      const p1Lines = await lab.readPcap(atP1.file);
      const p2Lines = await lab.readPcap(atP2.file);
      const backLines = await lab.readPcap(back.file);
      const isPing = (l: string) => /ICMP echo (request|reply)/.test(l);
      t.ok(
        p1Lines.length === 2 && p1Lines.every(isPing),
        `p1 received nothing but its own ping: ${p1Lines.join("; ")}`,
      );
      t.ok(
        p2Lines.length === 2 && p2Lines.every(isPing),
        `p2 received nothing but its own ping: ${p2Lines.join("; ")}`,
      );
      t.ok(
        backLines.length === 2 && backLines.every((l) => /ICMP echo request/.test(l)),
        `the NAT address sent nothing back (no RST, no ICMP), only the two control pings: ${backLines.join("; ")}`,
      );
      const after = await lab.drops();
      if (before && after)
        t.ok(
          (after.unsolicited ?? 0) - (before.unsolicited ?? 0) >= 9 ||
            totalDrops(after) - totalDrops(before) >= 9,
          "the 9 unsolicited packets were counted as drops",
        );
      else t.comment("no drop counters exposed by the daemon; not checking counts here");
    },
  );

  t.test(
    "a burst of malformed packets from p1 leaves traffic working and is counted as drops",
    { skip: noDaemon },
    async (t) => {
      const py = scapyPython() ?? "python3";
      const rounds = 5;
      const before = await lab.drops();
      const cap = await lab.capture("inet", "eth0", `src host ${nat} or net ${insidePrefix}`);
      const gwMac = await lab.mac("nat", lab.lab.inside.bridge);
      const r = await lab.exec(
        "p1",
        [
          py,
          `${HELPERS}/malformed.py`,
          "--iface",
          "eth0",
          "--gw-mac",
          gwMac,
          "--src",
          lab.p1,
          "--dst",
          inet,
          "--rounds",
          String(rounds),
        ],
        { timeoutMs: 60_000 },
      );
      t.equal(r.code, 0, `scapy sent the burst ${r.stderr}`);
      const sent = JSON.parse(r.stdout || "{}") as { ports?: Record<string, number> };
      const ports = sent.ports ?? {};
      await sleep(500);
      await cap.stop();
      t.equal(lab.daemon?.child.exitCode, null, "the daemon is still running");

      // What may cross: well-formed packets the NAT translates without verifying L4 checksums
      // (RFC 5508 REQ-3c spirit; the server drops them), unusual but valid IP and TCP options,
      // and a stray bare ACK (picked up like nf_conntrack_tcp_loose). Everything else must not.
      const mayCross = new Set([
        "icmp_bad_checksum",
        "tcp_bad_checksum",
        "udp_bad_checksum",
        "ip_option_rr",
        "ip_option_unknown",
        "tcp_odd_options",
        "tcp_no_flow",
      ]);
      const mustDrop = Object.keys(ports).filter((k) => !mayCross.has(k));
      t.ok(mustDrop.length >= 11, `kinds that must be dropped: ${mustDrop.join(", ")}`);
      const lines = await lab.readPcap(cap.file);
      const allowedPorts = [...mayCross].map((k) => ports[k]).filter((p) => p !== undefined);
      const unexpected = lines.filter((l) => {
        if (!l.includes(` IP ${nat}`)) return true; // a private source: never allowed
        if (/ICMP echo request, id (\d+)/.test(l))
          return !allowedPorts.includes(Number(/id (\d+)/.exec(l)?.[1]));
        const m = /^\S+ IP [\d.]+\.(\d+) > /.exec(l);
        return !(m && allowedPorts.includes(Number(m[1])));
      });
      t.same(unexpected, [], "only the well-formed kinds crossed, all from the NAT address");
      t.ok(lines.length > 0, `the capture saw the kinds that may cross (${lines.length} packets)`);

      // Traffic still works.
      const ping = await lab.exec("p1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", inet]);
      t.match(ping.stdout, /2 received/, "ping still works");
      const srv = udpEchoPeer(9004);
      t.ok(await listening("u", 9004));
      const u = await lab.exec("p1", ["socat", "-T", "2", "-", `UDP:${inet}:9004`], {
        input: "after\n",
        timeoutMs: 10_000,
      });
      t.match(u.stdout, /^after from /, "UDP still works");
      await srv.stop();

      // Per reason (the labels of src/nat/stats.ts DROP_REASON_NAMES), per round: six broken TCP
      // and UDP headers plus the 3-byte ICMP; the unknown protocol; the lone later fragment; the
      // two ICMP errors whose embedded header is junk or has a bad checksum.
      const perRound: Record<string, number> = {
        malformed_l4: 7,
        unsupported_protocol: 1,
        fragment_no_state: 1,
        icmp_error_bad_embedded: 2,
      };
      // The lone later fragment is held for its first fragment (FRAGMENT_HOLD_SECONDS, 5 s) and
      // counted when the data loop's tick expires it, so wait for the counters (bounded, ~10 s).
      const reached = (d: Record<string, number> | null) =>
        !!before &&
        !!d &&
        Object.entries(perRound).every(
          ([why, n]) => (d[why] ?? 0) - (before[why] ?? 0) >= n * rounds,
        );
      let after = await lab.drops();
      for (let i = 0; i < 40 && before && after && !reached(after); i++) {
        await sleep(250);
        after = await lab.drops();
      }
      t.ok(
        before && after,
        "the daemon exposes drop counters (a tunnat_*drop* series with a reason label on /metrics, or drops in tunnat stats --json)",
      );
      if (before && after) {
        const delta = totalDrops(after) - totalDrops(before);
        t.ok(
          delta >= mustDrop.length * rounds,
          `drops rose by ${delta} (>= ${mustDrop.length * rounds})`,
        );
        for (const [why, n] of Object.entries(perRound)) {
          const d = (after[why] ?? 0) - (before[why] ?? 0);
          t.ok(d >= n * rounds, `${why} rose by ${d} (>= ${n * rounds})`);
        }
        t.comment(`drops after the burst: ${JSON.stringify(after)}`);
      }
    },
  );
}
