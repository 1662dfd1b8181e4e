/**
 * Shared-address mode against the real daemon in the namespace lab of lab/README.md, with the
 * NAT address being the nat namespace's own outside address (203.0.113.2 on out0), as on a
 * one-ENI NAT instance whose Elastic IP is on its primary private IP:
 *
 *   p1 10.0.1.2, p2 10.0.1.3 -- br-in [nat: out0 203.0.113.2 = --nat-address] -- inet .10/.11
 *
 * While p1 holds a connection through the NAT (an echo every 0.2 s) the nat namespace's own
 * services keep working: its "sshd" (a socat banner on :22) answers the internet, it connects
 * out itself, and it pings and is pinged. The internet sees p1 as 203.0.113.2 with a source port
 * in the reserved range (above net.ipv4.ip_local_port_range). An nmap SYN scan of 203.0.113.2
 * finds the host's own port 22 and the forward 443 open and reaches no private host (their
 * listeners log no connection); the scan's probes to the reserved range are counted as
 * unsolicited drops. A --ports range that overlaps the ephemeral range exits 2 and changes
 * nothing; SIGTERM removes the nft table and the route.
 *
 * Needs root, nmap, socat, nft, ping and python3; skipped naming what is missing. Namespaces are
 * `tnshr-<pid>-*`, removed in teardown. Every packet goes to an address of these namespaces.
 */
import { join } from "node:path";
import t from "tap";
import { daemonArgs } from "../../src/cli/lab.js";
import { BIN, HELPERS, Lab, missing, sleep } from "./helpers/lab.js";
import { scanAllTcp } from "./helpers/nmap.js";

const reason = missing(["nmap", "socat", "nft", "ping", "python3"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnshr");
  t.teardown(() => lab.down());
  const [server] = lab.inet as [string, string];
  const shared = lab.lab.outside.natInterfaceAddress;
  const esc = (a: string) => a.replace(/\./g, "\\.");
  const connectPy = join(HELPERS, "connect.py");
  const connect = async (role: "p1" | "nat" | "inet", host: string, port: number) =>
    (
      await lab.exec(role, ["python3", connectPy, host, String(port), "3"], { timeoutMs: 15_000 })
    ).stdout.trim();
  // The lab's flags with the shared address instead of the dedicated one.
  const args = (extra: string[]) => {
    const a = daemonArgs(lab.lab, lab.controlSocket);
    a[a.indexOf("--nat-address") + 1] = shared;
    return [process.execPath, BIN, "run", ...a, ...extra];
  };

  const eph = (await lab.sh("nat", ["cat", "/proc/sys/net/ipv4/ip_local_port_range"]))
    .trim()
    .split(/\s+/)
    .map(Number) as [number, number];

  // Before anything else: a refused start (an overlapping range) must leave nothing behind.
  const refused = await lab.exec("nat", args(["--ports", `${eph[0]}-${eph[0] + 10}`]), {
    timeoutMs: 20_000,
  });
  const tablesAfterRefusal = await lab.sh("nat", ["nft", "list", "tables"]);

  // The host's own services; the inside hosts' private listeners, which must see no connection.
  lab.spawn("nat", ["socat", `TCP-LISTEN:22,bind=${shared},fork,reuseaddr`, "SYSTEM:echo nat-ssh"]);
  lab.spawn("inet", ["python3", connectPy, "--serve-peer", server, "80"]);
  lab.spawn("inet", ["socat", `TCP-LISTEN:81,bind=${server},fork,reuseaddr`, "PIPE"]);
  lab.spawn("p2", ["socat", "TCP-LISTEN:8443,fork,reuseaddr", "SYSTEM:echo p2-forward"]);
  const privateListeners = (["p1", "p2"] as const).flatMap((h) =>
    [22, 8080, 9999].map((port) =>
      lab.spawn(h, [
        "socat",
        "-d",
        "-d",
        `TCP-LISTEN:${port},fork,reuseaddr`,
        "SYSTEM:echo private",
      ]),
    ),
  );
  await sleep(300);

  const daemon = lab.spawn("nat", args(["--forward", `tcp:443=${lab.p2}:8443`]));
  for (let i = 0; i < 100; i++) {
    if (daemon.child.exitCode !== null) break;
    if (await lab.daemonAnswers("/healthz", 1)) break;
    await sleep(100);
  }

  t.test("a --ports range overlapping the host's ephemeral ports exits 2", async (t) => {
    t.equal(refused.code, 2, refused.stderr);
    t.match(refused.stderr, /--ports.*ip_local_port_range/);
    t.notMatch(tablesAfterRefusal, /tunnat/, "no nft table was left");
  });

  t.test(
    "the daemon selects shared-address mode and a range above the ephemeral ports",
    async (t) => {
      t.match(daemon.out(), /shared-address mode/, daemon.out().slice(-2000));
      t.match(daemon.out(), new RegExp(`"ports":"${eph[1] + 1}-65535"`));
      const tables = await lab.sh("nat", ["nft", "list", "tables"]);
      t.match(tables, /tunnat_shared_/);
    },
  );

  t.test("the host's own traffic keeps working while inside traffic crosses", async (t) => {
    const hold = lab.spawn("p1", ["python3", connectPy, "--hold", server, "81", "4"]);
    for (let i = 0; i < 50 && !/ready/.test(hold.out()); i++) await sleep(100);
    t.match(hold.out(), /ready/, "p1's connection through the NAT is up");
    const seen = await connect("p1", server, 80);
    const m = /^ok ([\d.]+):(\d+)$/.exec(seen);
    t.ok(m, `the internet host answered p1 (${seen})`);
    t.equal(m?.[1], shared, "p1 appears as the shared address");
    t.ok(Number(m?.[2]) > eph[1], `from a port above the ephemeral range (${m?.[2]})`);
    t.equal(await connect("inet", shared, 22), "ok nat-ssh", "the host's sshd answers");
    const own = await connect("nat", server, 80);
    t.match(own, new RegExp(`^ok ${shared.replace(/\./g, "\\.")}:`), "the host connects out");
    const pingOut = await lab.exec("nat", ["ping", "-c", "2", "-i", "0.2", "-W", "1", server]);
    t.equal(pingOut.code, 0, "the host pings out");
    const pingIn = await lab.exec("inet", ["ping", "-c", "2", "-i", "0.2", "-W", "1", shared]);
    t.equal(pingIn.code, 0, "the host is pinged");
    // Operators see the address the internet sees, never the internal one the table holds.
    const internal = /169\.254\.77\.2\b/;
    const metrics = await lab.metricsText();
    t.match(
      metrics,
      new RegExp(`tunnat_nat_ports_used\\{nat_address="${esc(shared)}",protocol="tcp"\\} [1-9]`),
      "the port-usage metrics are labelled with the shared address",
    );
    t.notMatch(metrics, internal, "no metric names the internal address");
    const cli = (verb: string[]) =>
      lab.sh("nat", [process.execPath, BIN, ...verb, "--socket", lab.controlSocket]);
    const flows = await cli(["flows", "--json", "--host", lab.p1]);
    t.match(flows, new RegExp(`"outsideAddr":\\s*"${esc(shared)}"`), "tunnat flows shows it");
    t.notMatch(flows, internal, "and not the internal address");
    t.match(await cli(["flows", "--nat", shared, "--count"]), /^[1-9]/, "--nat takes it");
    const stats = await cli(["stats", "--json"]);
    t.match(stats, new RegExp(`"natAddress":\\s*"${esc(shared)}"`), "tunnat stats shows it");
    t.notMatch(stats, internal);
    t.notMatch(await cli(["status"]), internal, "tunnat status does not name the internal one");
    await hold.exited;
    t.match(hold.out(), /^ok \d+/m, "p1's connection went on throughout");
    t.equal(await connect("inet", shared, 443), "ok p2-forward", "the forward answers");
  });

  t.test("a scan of the shared address reaches no private host", async (t) => {
    const scan = await scanAllTcp(lab, "inet", shared);
    t.equal(scan.code, 0, "nmap ran");
    t.same(scan.open, ["22", "443"], "only the host's own service and the forward are open");
    for (const l of privateListeners)
      t.notMatch(l.out(), /accepting connection/, "no private listener was reached");
    const metrics = await lab.metricsText();
    const unsolicited = Number(
      /tunnat_inbound_refused_packets_total\{reason="unsolicited"\} (\d+)/.exec(metrics)?.[1] ?? 0,
    );
    t.ok(
      unsolicited > 1000,
      `the probes to the reserved range were dropped and counted (${unsolicited})`,
    );
  });

  t.test("stopping removes the kernel plumbing of shared-address mode", async (t) => {
    t.equal(await daemon.stop(5000), 0);
    t.notMatch(await lab.sh("nat", ["nft", "list", "tables"]), /tunnat_shared_/);
    t.notMatch(await lab.sh("nat", ["ip", "route", "show"]), /169\.254\.77\.2/);
    t.equal(await connect("inet", shared, 22), "ok nat-ssh", "the host's sshd still answers");
  });
}
