/**
 * RFC 6888 REQ-4 / REQ-11 and RFC 5508 REQ-8 with real sockets: with a per-host quota of 3 UDP
 * mappings, p1's fourth source port is refused and p1's kernel hears ICMP 3/13 (a connected UDP
 * socket reports EHOSTUNREACH, Linux's errno for "communication administratively prohibited"),
 * while p1's existing mappings and p2 keep working.
 *
 *   p1, p2 ── nat (tunnat --per-host-quota 3) ── inet (UDP echo on :7)
 *
 * Needs root, socat and python3. Namespaces are `tnquota-<pid>-*`, removed in teardown.
 */
import t from "tap";
import { Lab, missing, sleep } from "./helpers/lab.js";

/** Python: from each source port, send one datagram to inet:7 and report the answer or errno. */
const probe = (dst: string, ports: number[]) => `
import errno, socket, sys
for sport in ${JSON.stringify(ports)}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.connect(("${dst}", 7))
    s.settimeout(2)
    s.send(b"hello")
    try:
        print(sport, "reply", s.recv(100).decode())
    except OSError as e:
        print(sport, "error", errno.errorcode.get(e.errno, e.errno) if e.errno else "timeout")
    s.close()
sys.stdout.flush()
`;

const reason = missing(["socat", "python3"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnquota");
  t.teardown(() => lab.down());
  const inet = lab.inet[0] ?? "";

  t.test(
    "a host over its quota gets 3/13; its mappings and other hosts keep working",
    async (t) => {
      lab.spawn("inet", ["socat", "UDP4-RECVFROM:7,fork", "EXEC:cat"]);
      await lab.startDaemon(["--per-host-quota", "3"]);
      await sleep(200);
      const first = await lab.exec("p1", [
        "python3",
        "-c",
        probe(inet, [41000, 41001, 41002, 41003]),
      ]);
      t.equal(first.code, 0, first.stderr);
      const lines = first.stdout.trim().split("\n");
      t.same(
        lines,
        ["41000 reply hello", "41001 reply hello", "41002 reply hello", "41003 error EHOSTUNREACH"],
        "three mappings, then ICMP 3/13 for the fourth (RFC 6888 REQ-11a/b)",
      );
      const again = await lab.exec("p1", ["python3", "-c", probe(inet, [41001])]);
      t.equal(
        again.stdout.trim(),
        "41001 reply hello",
        "an existing mapping still works (REQ-11d)",
      );
      const other = await lab.exec("p2", ["python3", "-c", probe(inet, [41003])]);
      t.equal(other.stdout.trim(), "41003 reply hello", "another host is unaffected");
      const drops = await lab.drops();
      t.ok((drops?.quota_exceeded ?? 0) >= 1, "counted as quota_exceeded");
    },
  );
}
