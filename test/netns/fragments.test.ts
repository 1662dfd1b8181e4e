/**
 * RFC 4787 REQ-14 (CONFORMANCE.md): out-of-order fragments cross the real daemon in the namespace
 * lab. scapy sends a 3000-byte UDP datagram as 1000-byte fragments, first fragment last, and the
 * receiver's socket (socat, or a python socket for the reply) must get the whole datagram.
 *
 * Needs root, socat and python3 with scapy. Namespaces are `tnfrag-<pid>-*`, removed in teardown.
 */
import { readFileSync } from "node:fs";
import t from "tap";
import { Lab, missing, scapyPython, sleep } from "./helpers/lab.js";

const reason = missing(["socat", "scapy"]);
if (reason) t.plan(0, reason);
else {
  const py = scapyPython() ?? "python3";
  const lab = await Lab.up("tnfrag");
  t.teardown(() => lab.down());
  const inet = lab.inet[0] ?? "";
  await lab.startDaemon();

  /** Python that sends `data` to dst:dport from sport as reversed, shuffled fragments. */
  const sendFragments = (dst: string, sport: string, dport: string, fill: string) => `
import random
from scapy.all import IP, UDP, Raw, fragment, send
pkt = IP(dst=${dst}) / UDP(sport=${sport}, dport=${dport}) / Raw(bytes([${fill}]) * 3000)
frags = fragment(pkt, fragsize=1000)
rest = frags[1:]
random.Random(4787).shuffle(rest)
send(list(reversed(rest)) + [frags[0]], verbose=False)
`;

  t.test("an outbound datagram sent first fragment last arrives whole", async (t) => {
    const file = `${lab.tmp}/out.bin`;
    const rx = lab.spawn("inet", ["socat", "-u", "UDP4-RECV:9999", `OPEN:${file},creat,trunc`]);
    await sleep(300);
    const r = await lab.exec("p1", [py, "-c", sendFragments(`"${inet}"`, "40000", "9999", "0x61")]);
    t.equal(r.code, 0, r.stderr);
    let got = Buffer.alloc(0);
    for (let i = 0; i < 20 && got.length < 3000; i++) {
      await sleep(100);
      try {
        got = readFileSync(file);
      } catch {
        // not created yet
      }
    }
    rx.child.kill("SIGTERM");
    t.equal(got.length, 3000, "3000 bytes received");
    t.ok(got.equals(Buffer.alloc(3000, 0x61)), "the same bytes");
  });

  t.test("an inbound reply sent first fragment last reaches the inside host whole", async (t) => {
    // p1 opens the mapping and waits for the reply; inet learns the mapped endpoint from the
    // first datagram and answers with fragments, first fragment last.
    const p1 = lab.exec(
      "p1",
      [
        py,
        "-c",
        `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40001))
s.settimeout(0.5)
data = b""
for _ in range(20):  # until inet's socket is up and its answer is back
    s.sendto(b"hi", ("${inet}", 9998))
    try:
        data, _ = s.recvfrom(65535)
        break
    except socket.timeout:
        pass
sys.stdout.write(str(len(data)) + " " + str(data == bytes([0x62]) * 3000))
`,
      ],
      { timeoutMs: 15_000 },
    );
    const inetSide = lab.exec(
      "inet",
      [
        py,
        "-c",
        `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9998))
s.settimeout(8)
_, (addr, port) = s.recvfrom(100)
${sendFragments("addr", "9998", "port", "0x62")}
`,
      ],
      { timeoutMs: 15_000 },
    );
    const [a, b] = await Promise.all([p1, inetSide]);
    t.equal(b.code, 0, `inet: ${b.stderr}`);
    t.equal(a.code, 0, `p1: ${a.stderr}`);
    t.equal(a.stdout.trim(), "3000 True", "the whole reply, unchanged");
  });
}
