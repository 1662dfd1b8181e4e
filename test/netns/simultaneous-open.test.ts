/**
 * RFC 5382 REQ-2 (CONFORMANCE.md): TCP simultaneous open through the NAT, as hole punching does.
 * The internet host drops SYNs without ACK that come from the NAT address, so p1's SYN to it never
 * lands; the internet host then connects to p1's mapping (NAT:40000) from the port p1 called. Its
 * SYN meets the flow in SYN_SENT, p1 answers SYN-ACK, and both sockets must reach ESTABLISHED and
 * carry data both ways.
 *
 *   p1:40000 ──SYN──► nat (tunnat) ──► inet:5000  (dropped by inet's nftables)
 *   p1:40000 ◄──SYN── nat ◄── inet:5000 connects to NAT:40000
 *
 * Needs root, nft and python3. Namespaces are `tnsim-<pid>-*`, removed in teardown.
 */
import t from "tap";
import { Lab, missing, sleep } from "./helpers/lab.js";

/** Python: bind, connect, exchange one line, print what came back. */
const side = (bindAddr: string, bindPort: number, dst: string, dport: number, say: string) => `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("${bindAddr}", ${bindPort}))
s.settimeout(15)
s.connect(("${dst}", ${dport}))
s.sendall(b"${say}\\n")
print("established", s.recv(100).decode().strip())
sys.stdout.flush()
`;

const reason = missing(["nft", "python3"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnsim");
  t.teardown(() => lab.down());

  t.test("a simultaneous open through the NAT reaches ESTABLISHED on both sides", async (t) => {
    const inet = lab.inet[0] ?? "";
    await lab.startDaemon();
    await lab.sh("inet", ["nft", "add", "table", "ip", "tnsim"]);
    await lab.sh("inet", ["nft", "add chain ip tnsim in { type filter hook input priority 0; }"]);
    await lab.sh("inet", [
      "nft",
      `add rule ip tnsim in ip saddr ${lab.natAddress} tcp flags & (syn | ack) == syn drop`,
    ]);
    const p1 = lab.exec("p1", ["python3", "-c", side("0.0.0.0", 40000, inet, 5000, "from-p1")], {
      timeoutMs: 20_000,
    });
    await sleep(700); // p1's SYN has crossed the NAT (and died at inet)
    const other = await lab.exec(
      "inet",
      ["python3", "-c", side(inet, 5000, lab.natAddress, 40000, "from-inet")],
      { timeoutMs: 20_000 },
    );
    const mine = await p1;
    t.equal(other.stdout.trim(), "established from-p1", `inet side: ${other.stderr}`);
    t.equal(mine.stdout.trim(), "established from-inet", `p1 side: ${mine.stderr}`);
  });
}
