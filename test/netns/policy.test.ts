/**
 * Egress rules and static port forwards against the real daemon in the namespace lab of
 * lab/README.md (p1 10.0.1.2, p2 10.0.1.3 -- nat [NAT 203.0.113.1] -- inet 203.0.113.10/.11),
 * with real sockets (test/netns/helpers/connect.py) and real servers (socat):
 *
 * - egress: the rules of the config file refuse exactly the flows they name, each with its own
 *   answer as the socket sees it: a TCP RST (ECONNREFUSED), ICMP 3/13 (EHOSTUNREACH), nothing (a
 *   timeout); a flow no rule names connects. Counted per rule in /metrics;
 * - reload: two connections held open (to ports 80 and 81 of an echo server); the config file's
 *   rules change to deny port 81 and SIGHUP is sent: the connection to 80 goes on without a loss,
 *   the one to 81 is ended (its next segment is answered with an RST) and counted, a new
 *   connection to 81 is refused, and one to 25 (no longer denied) connects;
 * - forwards: --forward tcp:443=10.0.1.3:8443 is reachable from the internet side and from p1
 *   through the NAT address (hairpinning); an nmap SYN scan of all 65,535 TCP ports of the NAT
 *   address finds 443 open and every other port filtered (dropped silently), though p1 and p2
 *   listen on ports of their own.
 *
 * Needs root, nmap, socat and python3; skipped naming what is missing. Namespaces are
 * `tnpol-<pid>-*`, removed in teardown. Every packet goes to an address of these namespaces.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { HELPERS, Lab, missing, sleep } from "./helpers/lab.js";
import { scanAllTcp } from "./helpers/nmap.js";

const reason = missing(["nmap", "socat", "python3"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnpol");
  t.teardown(() => lab.down());
  const [server, other] = lab.inet as [string, string];
  const nat = lab.natAddress;
  const connectPy = join(HELPERS, "connect.py");
  const cfgFile = join(lab.tmp, "tunnat.json");
  const writeRules = (egress: unknown[]) =>
    writeFileSync(cfgFile, JSON.stringify({ egress, forwards: [`tcp:443=${lab.p2}:8443`] }));

  // Servers: an echo server on inet for every port the tests use; a banner on p2's forwarded
  // port; private services on p1 and p2 that nothing from outside may reach.
  for (const port of [25, 26, 27, 80, 81])
    lab.spawn("inet", ["socat", `TCP-LISTEN:${port},bind=${server},fork,reuseaddr`, "PIPE"]);
  lab.spawn("inet", ["socat", `TCP-LISTEN:25,bind=${other},fork,reuseaddr`, "PIPE"]);
  lab.spawn("p2", ["socat", "TCP-LISTEN:8443,fork,reuseaddr", "SYSTEM:echo p2-forward"]);
  for (const host of ["p1", "p2"] as const)
    for (const port of [22, 80, 8080])
      lab.spawn(host, ["socat", `TCP-LISTEN:${port},fork,reuseaddr`, "SYSTEM:echo private"]);
  await sleep(300);

  const connect = async (role: "p1" | "inet", host: string, port: number, timeout = 3) =>
    (
      await lab.exec(role, ["python3", connectPy, host, String(port), String(timeout)], {
        timeoutMs: 15_000,
      })
    ).stdout.trim();

  writeRules([
    `deny to=${server}/32 proto=tcp ports=25 answer=rst`,
    { action: "deny", to: `${server}/32`, proto: "tcp", ports: "26" },
    `deny to=${server}/32 proto=tcp ports=27 answer=silent`,
  ]);
  await lab.startDaemon(["--config", cfgFile]);

  t.test("egress rules refuse exactly the flows they name, as they say", async (t) => {
    t.equal(await connect("p1", server, 25), "ECONNREFUSED", "answer=rst: a TCP RST");
    t.equal(await connect("p1", server, 26), "EHOSTUNREACH", "default answer: ICMP 3/13");
    t.equal(await connect("p1", server, 27, 2), "timeout", "answer=silent: nothing");
    t.equal(await connect("p1", server, 80), "ok", "a flow no rule names connects");
    t.equal(await connect("p1", other, 25), "ok", "the same port elsewhere connects");
    const m = await lab.metricsText();
    t.match(m, /tunnat_egress_rule_flows_total\{rule="1",action="deny"[^}]*\} 1\b/);
    t.match(m, /tunnat_egress_rule_flows_total\{rule="2",action="deny"[^}]*\} 1\b/);
    t.match(m, /tunnat_dropped_packets_total\{reason="egress_denied"\} [1-9]/);
  });

  t.test("a SIGHUP change ends denied flows and keeps allowed ones", async (t) => {
    const hold = (port: number) =>
      lab.spawn("p1", ["python3", connectPy, "--hold", server, String(port), "4"]);
    const keep = hold(80);
    const cut = hold(81);
    for (let i = 0; i < 50 && !(/ready/.test(keep.out()) && /ready/.test(cut.out())); i++)
      await sleep(100);
    t.match(keep.out(), /ready/, "the connection to 80 is up");
    t.match(cut.out(), /ready/, "the connection to 81 is up");
    await sleep(700);
    writeRules([`deny to=${server}/32 proto=tcp ports=81 answer=rst`]);
    lab.daemon?.child.kill("SIGHUP");
    await Promise.all([keep.exited, cut.exited]);
    t.match(keep.out(), /^ok \d+/m, "the allowed connection went on without a loss");
    t.match(cut.out(), /^ECONNRESET \d+/m, "the denied connection was ended with an RST");
    t.equal(await connect("p1", server, 81), "ECONNREFUSED", "a new one to 81 is refused");
    t.equal(await connect("p1", server, 25), "ok", "25 is no longer denied");
    const m = await lab.metricsText();
    t.match(m, /tunnat_egress_flows_ended_total [1-9]/, "the ended flow is counted");
    t.match(m, /tunnat_egress_rules 1\b/);
  });

  t.test("a forward is the only way in: reachable, hairpinned, the rest filtered", async (t) => {
    t.equal(await connect("inet", nat, 443), "ok p2-forward", "from the internet side");
    t.equal(await connect("p1", nat, 443), "ok p2-forward", "from p1 through the NAT address");
    const scan = await scanAllTcp(lab, "inet", nat);
    t.equal(scan.code, 0, "nmap ran");
    t.same(scan.open, ["443"], "443 is the only open port");
    t.equal(scan.filtered, 65534, "every other port is filtered (no answer)");
    const m = await lab.metricsText();
    t.match(m, /tunnat_forward_flows_total\{forward="tcp:443=10\.0\.1\.3:8443"\} [2-9]/);
  });
}
