/**
 * The guard (src/control/guard.ts) and the refusals of a second start, against the real daemon
 * in the namespace lab:
 *
 *   p1 10.0.1.2 ─┐                                              ┌─ inet 203.0.113.10/.11
 *   p2 10.0.1.3 ─┴─ br-in 10.0.1.1 [nat: tunnat0] out0 203.0.113.2 ─┘  (NAT address 203.0.113.1)
 *
 * - routed-around inbound: inet routes the inside prefix via out0's address and sends pings, SYNs
 *   and UDP to p1; nothing reaches p1, a real TCP service there gives no banner, and the guard
 *   counts them (routed_inbound);
 * - spoofed sources: p1 sends UDP with the NAT address as source (from p2's mapped port) and
 *   with 192.0.2.55; nothing leaves on out0's link, counted (spoofed_source);
 * - fail closed: after SIGKILL, and across SIGTERM -> restart, no packet with a private source
 *   appears on the outside link; `tunnat down` opens it and leaves nothing;
 * - a second `tunnat run` that conflicts (control socket, TUN, table, NAT address) is refused and
 *   leaves the first daemon's state file, rules and forwarding as they were; a state file whose
 *   pid is alive but not a tunnat does not block a start;
 * - readiness: a policy rule or proxy entry deleted by hand turns /readyz 503 naming it.
 *
 * Addresses come from lab/lab.json through the fixture. Needs root, hping3, scapy, tcpdump,
 * socat, nft. Namespaces are `tngrd-<pid>-*`, removed in teardown.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { daemonArgs } from "../../src/cli/lab.js";
import { BIN, Lab, missing, scapyPython, sleep } from "./helpers/lab.js";

const reason = missing(["hping3", "scapy", "tcpdump", "socat", "nft"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tngrd");
  t.teardown(() => lab.down());
  const insidePrefix = lab.lab.inside.prefix;
  const outsideAddr = lab.lab.outside.natInterfaceAddress;
  const inet0 = lab.inet[0] ?? "";
  const table = "4242";
  const stateFile = `${lab.controlSocket}.plumbing.json`;
  const py = scapyPython() ?? "python3";

  /** The guard's counter for `reason`, read from the kernel (works without a daemon). */
  const kernelCounter = async (reason: string): Promise<number> => {
    const r = await lab.exec("nat", [
      "nft",
      "-j",
      "list",
      "counters",
      "table",
      "ip",
      `tunnat_${table}`,
    ]);
    if (r.code !== 0) return -1;
    const doc = JSON.parse(r.stdout) as {
      nftables: { counter?: { name: string; packets: number } }[];
    };
    return doc.nftables.find((o) => o.counter?.name === reason)?.counter?.packets ?? -1;
  };
  /** The same counter as the daemon exports it. */
  const metricCounter = async (reason: string): Promise<number> => {
    const m = new RegExp(
      `^tunnat_guard_dropped_packets_total\\{reason="${reason}"\\} (\\d+)`,
      "m",
    ).exec(await lab.metricsText());
    return m ? Number(m[1]) : -1;
  };
  const readyz = async (): Promise<{ code: string; body: string }> => {
    const r = await lab.exec("nat", [
      "curl",
      "-s",
      "-m",
      "2",
      "-w",
      "\n%{http_code}",
      `http://${lab.lab.daemon.metrics}/readyz`,
    ]);
    const lines = r.stdout.trimEnd().split("\n");
    return { code: lines.pop() ?? "", body: lines.join("\n") };
  };
  /** Poll /readyz until `want` (status) or ~12 s; the last answer. */
  const waitReady = async (want: string) => {
    let r = await readyz();
    for (let i = 0; i < 60 && r.code !== want; i++) {
      await sleep(200);
      r = await readyz();
    }
    return r;
  };
  const pingOk = async (from: "p1" | "p2") =>
    (await lab.exec(from, ["ping", "-c", "2", "-i", "0.2", "-W", "2", inet0])).code === 0;
  /** The lab's run flags with some values replaced (each flag once). */
  const runArgs = (over: Record<string, string> = {}): string[] => {
    const base = daemonArgs(lab.lab, lab.controlSocket);
    const out: string[] = [];
    for (let i = 0; i < base.length; i += 2) {
      const flag = base[i] ?? "";
      out.push(flag, over[flag] ?? base[i + 1] ?? "");
    }
    for (const [flag, v] of Object.entries(over)) if (!out.includes(flag)) out.push(flag, v);
    return out;
  };
  const ruleLines = async () =>
    (await lab.sh("nat", ["ip", "rule"])).split("\n").filter((l) => l.includes(`lookup ${table}`));

  t.test(
    "a neighbour routing the inside prefix via the gateway reaches no private host",
    async (t) => {
      await lab.startDaemon();
      await lab.sh("inet", ["ip", "route", "add", insidePrefix, "via", outsideAddr]);
      t.teardown(() => lab.exec("inet", ["ip", "route", "del", insidePrefix, "via", outsideAddr]));
      // A real service with a banner on p1.
      const srv = lab.spawn("p1", [
        "socat",
        "TCP-LISTEN:2222,reuseaddr,fork",
        "SYSTEM:echo banner-p1",
      ]);
      t.teardown(() => srv.stop(500));
      await sleep(300);
      const before = await metricCounter("routed_inbound");
      t.ok(before >= 0, "the daemon exports the guard's counter");
      const cap = await lab.capture("p1", "eth0", `ip and not src net ${insidePrefix}`);
      await lab.exec("inet", ["ping", "-c", "3", "-i", "0.2", "-W", "1", lab.p1]);
      await lab.exec("inet", ["hping3", "-S", "-p", "2222", "-c", "3", "-i", "u200000", lab.p1]);
      await lab.exec("inet", ["hping3", "--udp", "-p", "5353", "-c", "3", "-i", "u200000", lab.p1]);
      const banner = await lab.exec(
        "inet",
        ["socat", "-T", "2", "-", `TCP:${lab.p1}:2222,connect-timeout=2`],
        {
          timeoutMs: 5000,
        },
      );
      t.notMatch(banner.stdout, /banner-p1/, "the outsider reads no banner of a private service");
      await cap.stop();
      t.same(await lab.readPcap(cap.file), [], "nothing from outside reached p1");
      for (let i = 0; i < 15 && (await metricCounter("routed_inbound")) < before + 9; i++)
        await sleep(200);
      t.ok(
        (await metricCounter("routed_inbound")) >= before + 9,
        "each probe is counted as routed_inbound",
      );
      t.ok(await pingOk("p1"), "outbound NAT still works");
    },
  );

  t.test("spoofed sources from an inside host do not leave on the outside link", async (t) => {
    if (!lab.daemon) await lab.startDaemon();
    // p2 holds a mapping from port 40000 (tunnat keeps a free port).
    await lab.exec("p2", ["sh", "-c", `echo hi | socat -u - UDP:${inet0}:9998,sourceport=40000`]);
    const before = await metricCounter("spoofed_source");
    const cap = await lab.capture("inet", "eth0", "udp dst port 9999");
    const script = [
      "from scapy.all import IP, UDP, Raw, send",
      `send(IP(src="${lab.natAddress}", dst="${inet0}")/UDP(sport=40000, dport=9999)/Raw(b"nat-src"), verbose=0)`,
      `send(IP(src="192.0.2.55", dst="${inet0}")/UDP(sport=40001, dport=9999)/Raw(b"foreign"), verbose=0)`,
    ].join("\n");
    const r = await lab.exec("p1", [py, "-c", script]);
    t.equal(r.code, 0, r.stderr);
    await sleep(300);
    await cap.stop();
    t.same(await lab.readPcap(cap.file), [], "neither spoofed datagram left the gateway");
    for (let i = 0; i < 15 && (await metricCounter("spoofed_source")) < before + 2; i++)
      await sleep(200);
    t.ok(
      (await metricCounter("spoofed_source")) >= before + 2,
      "both are counted as spoofed_source",
    );
  });

  t.test("an inside or NAT source arriving from outside is dropped as forged", async (t) => {
    if (!lab.daemon) await lab.startDaemon();
    // inet needs a route to p1 at all: the neighbour of the routed-around test.
    await lab.sh("inet", ["ip", "route", "add", insidePrefix, "via", outsideAddr]);
    t.teardown(() => lab.exec("inet", ["ip", "route", "del", insidePrefix, "via", outsideAddr]));
    const before = await metricCounter("spoofed_source");
    // Towards the NAT address a forged inside source would pass for hairpinning; towards p1 for
    // an inside neighbour.
    const cap = await lab.capture("p1", "eth0", "udp dst port 9997");
    const script = [
      "from scapy.all import IP, UDP, Raw, send",
      `send(IP(src="${lab.p2}", dst="${lab.natAddress}")/UDP(sport=5555, dport=6000)/Raw(b"hp"), verbose=0)`,
      `send(IP(src="${lab.p2}", dst="${lab.p1}")/UDP(sport=5555, dport=9997)/Raw(b"in"), verbose=0)`,
      `send(IP(src="${lab.natAddress}", dst="${lab.natAddress}")/UDP(sport=5555, dport=6001)/Raw(b"nat"), verbose=0)`,
    ].join("\n");
    const r = await lab.exec("inet", [py, "-c", script]);
    t.equal(r.code, 0, r.stderr);
    await sleep(300);
    await cap.stop();
    t.same(await lab.readPcap(cap.file), [], "nothing forged reached p1");
    for (let i = 0; i < 15 && (await metricCounter("spoofed_source")) < before + 3; i++)
      await sleep(200);
    t.ok(
      (await metricCounter("spoofed_source")) >= before + 3,
      "all three are counted as spoofed_source",
    );
  });

  t.test("a killed daemon fails closed; so does a restart; tunnat down opens it", async (t) => {
    if (!lab.daemon) await lab.startDaemon();
    t.ok(await pingOk("p1"), "forwarding before the kill");
    const d = lab.daemon;
    lab.daemon = undefined;
    d?.child.kill("SIGKILL");
    await d?.exited;
    let cap = await lab.capture("inet", "eth0", `src net ${insidePrefix}`);
    const ping = await lab.exec("p1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", inet0]);
    await lab.exec("p1", ["hping3", "--udp", "-p", "9997", "-c", "3", "-i", "u200000", inet0]);
    await cap.stop();
    t.same(await lab.readPcap(cap.file), [], "after SIGKILL no private source on the outside link");
    t.match(
      ping.stdout,
      /filtered|Unreachable/i,
      "the sender hears the prohibit route (ICMP 3/13)",
    );
    // Without the prohibit route the lookup falls through to the main table: the nft chain still
    // drops what would leave untranslated.
    await lab.sh("nat", [
      "ip",
      "route",
      "del",
      "prohibit",
      "default",
      "table",
      table,
      "metric",
      "4294967295",
    ]);
    const noTun = await kernelCounter("no_tun");
    cap = await lab.capture("inet", "eth0", `src net ${insidePrefix}`);
    await lab.exec("p1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", inet0]);
    await cap.stop();
    t.same(await lab.readPcap(cap.file), [], "without the prohibit route nothing leaves either");
    t.ok((await kernelCounter("no_tun")) >= noTun + 3, "the guard counts them as no_tun");

    // SIGTERM -> restart with pings running all along.
    await lab.startDaemon();
    cap = await lab.capture("inet", "eth0", `src net ${insidePrefix}`);
    const pings = lab.spawn("p1", ["ping", "-c", "120", "-i", "0.05", "-W", "1", inet0]);
    await sleep(500);
    await lab.stopDaemon();
    await sleep(800);
    await lab.startDaemon();
    await pings.exited;
    await cap.stop();
    t.same(await lab.readPcap(cap.file), [], "in the restart gap no private source left");
    t.match(pings.out(), /bytes from/, "pings crossed before and after the restart");
    const replies = (pings.out().match(/bytes from/g) ?? []).length;
    const refused = (pings.out().match(/filtered/gi) ?? []).length;
    t.comment(
      `restart under 20 pings/s: ${replies} replies, ${refused} refused with ICMP 3/13, 0 leaked`,
    );

    // Opening on purpose.
    await lab.stopDaemon();
    const down = await lab.exec("nat", [process.execPath, BIN, "down", ...runArgs()]);
    t.equal(down.code, 0, down.stderr);
    t.match(down.stdout, /removed/);
    t.match(down.stdout, new RegExp(`nft delete table ip tunnat_${table}`));
    t.notMatch(await lab.sh("nat", ["nft", "list", "tables"]), /tunnat/, "no nft table left");
    t.same(await ruleLines(), [], "no rule left");
    const left = await lab.exec("nat", ["ip", "route", "show", "table", table]);
    t.equal(left.stdout.trim(), "", "no route left in its table");
    cap = await lab.capture("inet", "eth0", `src net ${insidePrefix}`);
    await lab.exec("p1", ["ping", "-c", "2", "-i", "0.2", "-W", "1", inet0]);
    await cap.stop();
    t.ok((await lab.readPcap(cap.file)).length >= 2, "opened: packets leave the main way again");
    const again = await lab.exec("nat", [process.execPath, BIN, "down", ...runArgs()]);
    t.equal(again.code, 0, again.stderr);
    t.match(again.stdout, /nothing to remove/, "down is idempotent");
  });

  t.test("a refused second start leaves the running daemon untouched", async (t) => {
    await lab.startDaemon();
    const state = readFileSync(stateFile, "utf8");
    const rules = await ruleLines();
    const proxy = await lab.sh("nat", ["ip", "neigh", "show", "proxy"]);
    const other = join(lab.tmp, "other.sock");
    const cases: [string, Record<string, string>, RegExp][] = [
      [
        "another --tun, the same control socket",
        { "--tun": "tunnat1", "--metrics": "127.0.0.1:9471" },
        /answers on/,
      ],
      [
        "the same --tun",
        { "--control-socket": other, "--metrics": "127.0.0.1:9471" },
        /TUNNAT_ERR_NO_TUN|busy/i,
      ],
      [
        "the same route table and priority",
        { "--tun": "tunnat1", "--control-socket": other, "--metrics": "127.0.0.1:9471" },
        /route table 4242 is in use/,
      ],
      [
        "the same NAT address",
        {
          "--tun": "tunnat1",
          "--control-socket": other,
          "--metrics": "127.0.0.1:9471",
          "--route-table": "4343",
          "--rule-priority": "4343",
        },
        /NAT address .* already routed/,
      ],
    ];
    for (const [what, over, why] of cases)
      for (let attempt = 1; attempt <= 2; attempt++) {
        const r = await lab.exec("nat", [process.execPath, BIN, "run", ...runArgs(over)], {
          timeoutMs: 20_000,
        });
        t.equal(r.code, 1, `${what} (attempt ${attempt}) is refused with exit 1`);
        t.match(r.stderr + r.stdout, why, `${what}: says why`);
        t.equal(readFileSync(stateFile, "utf8"), state, `${what}: the state file is intact`);
        t.same(await ruleLines(), rules, `${what}: the rules are intact`);
        t.equal(
          await lab.sh("nat", ["ip", "neigh", "show", "proxy"]),
          proxy,
          `${what}: proxy ARP intact`,
        );
      }
    t.notMatch(await lab.sh("nat", ["nft", "list", "tables"]), /tunnat_4343/, "no second guard");
    t.ok(await pingOk("p1"), "the first daemon still forwards");
    t.equal((await readyz()).code, "200", "and is ready");
    t.equal(lab.daemon?.child.exitCode, null, "and runs");
  });

  t.test("a state file whose pid is alive but not a tunnat does not block a start", async (t) => {
    await lab.stopDaemon();
    const sleeper = lab.spawn("nat", ["sleep", "60"]);
    t.teardown(() => sleeper.stop(200));
    await sleep(200);
    const pid = sleeper.child.pid ?? 0;
    writeFileSync(stateFile, JSON.stringify({ pid, tun: lab.lab.daemon.tun, undo: [] }));
    await lab.startDaemon();
    t.ok(await pingOk("p1"), "the daemon started and forwards");
  });

  t.test("readiness names a policy rule or proxy entry deleted by hand", async (t) => {
    if (!lab.daemon) await lab.startDaemon();
    t.equal((await waitReady("200")).code, "200", "ready at first");
    const rule = [
      "iif",
      lab.lab.inside.bridge,
      "from",
      insidePrefix,
      "lookup",
      table,
      "priority",
      table,
    ];
    await lab.sh("nat", ["ip", "rule", "del", ...rule]);
    let r = await waitReady("503");
    t.equal(r.code, "503", "a missing policy rule makes /readyz 503");
    t.match(r.body, /policy rule/, `and names it: ${r.body}`);
    t.match(await lab.metricsText(), /^tunnat_ready 0$/m, "tunnat_ready says 0");
    await lab.sh("nat", ["ip", "rule", "add", ...rule]);
    t.equal((await waitReady("200")).code, "200", "restoring it makes it ready again");

    const nat = lab.natAddress;
    await lab.sh("nat", ["ip", "neigh", "del", "proxy", nat, "dev", lab.lab.outside.natInterface]);
    r = await waitReady("503");
    t.equal(r.code, "503", "a missing proxy ARP entry makes /readyz 503");
    t.match(r.body, /proxy ARP/, `and names it: ${r.body}`);
    await lab.startDaemon(); // a restart puts it back
    t.equal((await waitReady("200")).code, "200", "a restart brings 200");
  });
}
