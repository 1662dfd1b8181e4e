import t from "tap";
import { parseEgressRule, parseForward, RuleError } from "../../../src/control/policy-config.js";
import type { Forward } from "../../../src/nat/config.js";
import { EgressPolicy, type EgressRule } from "../../../src/nat/egress.js";
import { DropReason } from "../../../src/nat/stats.js";
import { ACK, RST, SYN } from "../../../src/wire/tcp.js";
import { expectPacket } from "../../helpers/checker.js";
import { NAT, NatHarness, P1, P2, SRV, SRV2, Verdict } from "../../helpers/nat.js";

function rules(...texts: string[]): EgressRule[] {
  return texts.map((x) => {
    const r = parseEgressRule(x);
    if (r instanceof RuleError) throw new Error(String(r));
    return r;
  });
}

function forwards(...texts: string[]): Forward[] {
  return texts.map((x) => {
    const r = parseForward(x);
    if (r instanceof RuleError) throw new Error(String(r));
    return r;
  });
}

t.test("an inbound SYN to a forwarded port reaches the inside host; replies go back", async (t) => {
  const h = new NatHarness({ forwards: forwards(`tcp:443=${P2}:8443`) });
  const syn = h.send({ src: SRV, dst: NAT, sport: 50000, dport: 443, flags: SYN });
  t.equal(syn.verdict, Verdict.Forward);
  expectPacket(t, syn.out, { src: SRV, dst: P2, sport: 50000, dport: 8443, flags: SYN });
  const synack = h.send({ src: P2, dst: SRV, sport: 8443, dport: 50000, flags: SYN | ACK });
  expectPacket(t, synack.out, { src: NAT, dst: SRV, sport: 443, dport: 50000 });
  const ack = h.send({ src: SRV, dst: NAT, sport: 50000, dport: 443, flags: ACK, payload: "x" });
  expectPacket(t, ack.out, { dst: P2, dport: 8443, payload: "x" });
  const fw = h.nat.forwards;
  t.equal(fw.flows[0], 1);
  t.equal(fw.packetsIn[0], 2);
  t.equal(fw.packetsOut[0], 1);
});

t.test("every other port stays dropped silently, and a forward opens only on a SYN", async (t) => {
  const h = new NatHarness({ forwards: forwards(`tcp:443=${P2}:8443`) });
  const other = h.send({ src: SRV, dst: NAT, sport: 50000, dport: 444, flags: SYN });
  t.equal(other.verdict, Verdict.Drop);
  t.equal(other.dropReason, DropReason.Unsolicited);
  const udp = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 5, dport: 443 });
  t.equal(udp.verdict, Verdict.Drop, "a TCP forward does not open UDP");
  const ack = h.send({ src: SRV, dst: NAT, sport: 50000, dport: 443, flags: ACK });
  t.equal(ack.verdict, Verdict.Drop);
  t.equal(ack.dropReason, DropReason.Unsolicited);
  t.equal(h.nat.forwards.flows[0], 0);
});

t.test("a forward's port is never handed out to a dynamic mapping", async (t) => {
  // A one-port range that is the forward's port: the inside host keeping port 443 would take it.
  const h = new NatHarness({ forwards: forwards(`tcp:443=${P2}:8443`), portLo: 443, portHi: 444 });
  const a = h.send({ src: P1, dst: SRV, sport: 443, dport: 80, flags: SYN });
  expectPacket(t, a.out, { src: NAT, sport: 444 });
  const b = h.send({ src: P1, dst: SRV, sport: 445, dport: 80, flags: SYN });
  t.equal(b.verdict, Verdict.Reply, "no port left: refused, not given 443");
  t.equal(h.stats.drops[DropReason.PortExhausted], 1);
  const pd = new NatHarness({
    forwards: forwards(`udp:53=${P2}`),
    mapping: "per-destination",
    portLo: 53,
    portHi: 53,
  });
  const u = pd.send({ src: P1, dst: SRV, proto: "udp", sport: 53, dport: 53 });
  t.equal(u.verdict, Verdict.Reply, "per-destination mode does not share the reserved port");
});

t.test("an inside host reaches a forward through the NAT address (hairpinning)", async (t) => {
  const h = new NatHarness({ forwards: forwards(`tcp:443=${P2}:8443`) });
  const syn = h.send({ src: P1, dst: NAT, sport: 40000, dport: 443, flags: SYN });
  t.equal(syn.verdict, Verdict.Forward);
  expectPacket(t, syn.out, { src: NAT, dst: P2, sport: 40000, dport: 8443, flags: SYN });
  const synack = h.send({ src: P2, dst: NAT, sport: 8443, dport: 40000, flags: SYN | ACK });
  t.equal(synack.verdict, Verdict.Forward);
  expectPacket(t, synack.out, { src: NAT, dst: P1, sport: 443, dport: 40000 });
  t.ok(h.stats.hairpinPackets >= 2);
});

t.test("an egress rule refuses the flows it names with the answer it names", async (t) => {
  const h = new NatHarness({
    egress: rules(
      `deny to=${SRV}/32 proto=tcp ports=25 answer=rst`,
      `deny to=${SRV}/32 proto=tcp ports=26 answer=silent`,
      `deny to=${SRV}/32 proto=udp`,
    ),
  });
  const rst = h.send({ src: P1, dst: SRV, sport: 40000, dport: 25, flags: SYN, seq: 7 });
  t.equal(rst.verdict, Verdict.Reply);
  expectPacket(t, rst.out, {
    src: SRV,
    dst: P1,
    sport: 25,
    dport: 40000,
    flags: RST | ACK,
    ack: 8,
  });
  const silent = h.send({ src: P1, dst: SRV, sport: 40001, dport: 26, flags: SYN });
  t.equal(silent.verdict, Verdict.Drop);
  t.equal(silent.dropReason, DropReason.EgressDenied);
  const icmp = h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 53 });
  t.equal(icmp.verdict, Verdict.Reply);
  expectPacket(t, icmp.out, { src: NAT, dst: P1, icmpType: 3, icmpCode: 13 });
  const ok = h.send({ src: P1, dst: SRV, sport: 40002, dport: 80, flags: SYN });
  t.equal(ok.verdict, Verdict.Forward, "a flow no rule names goes through");
  const other = h.send({ src: P1, dst: SRV2, sport: 40003, dport: 25, flags: SYN });
  t.equal(other.verdict, Verdict.Forward, "another destination goes through");
  t.equal(h.stats.drops[DropReason.EgressDenied], 3);
  t.same(Array.from(h.nat.egress.matched), [1, 1, 1]);
  t.equal(h.nat.table.active, 2, "refused flows made no flow");
});

t.test("rules are checked when a flow is made, never per packet of a flow", async (t) => {
  const h = new NatHarness({ egress: rules(`deny to=${SRV}/32 proto=udp ports=53`) });
  h.nat.egress = new EgressPolicy([]);
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 53 });
  h.nat.egress = new EgressPolicy(rules(`deny to=${SRV}/32 proto=udp ports=53`));
  const r = h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 53 });
  t.equal(r.verdict, Verdict.Forward, "the existing flow is not looked at again");
  t.equal(h.nat.egress.matched[0], 0);
});

t.test("a reload ends the flows its rules deny and keeps the others", async (t) => {
  const h = new NatHarness({ forwards: forwards(`tcp:443=${P2}:8443`) });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 53 });
  h.send({ src: P1, dst: SRV, sport: 40000, dport: 22, flags: SYN });
  h.send({ src: SRV, dst: NAT, sport: 50000, dport: 443, flags: SYN });
  t.equal(h.nat.table.active, 3);
  const ended = h.nat.setEgress(
    new EgressPolicy(rules(`deny to=${SRV}/32 proto=udp`, "deny to=0.0.0.0/0 proto=tcp ports=443")),
  );
  t.equal(ended, 1, "the UDP flow is ended; the forward's flow is inbound and kept");
  t.equal(h.nat.table.active, 2);
  t.equal(h.nat.egress.ended[0], 1);
  t.equal(h.stats.egressFlowsEnded, 1);
  const next = h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 53 });
  t.equal(next.verdict, Verdict.Reply, "its next packet meets the new rules");
  const ssh = h.send({ src: P1, dst: SRV, sport: 40000, dport: 22, flags: ACK });
  t.equal(ssh.verdict, Verdict.Forward, "the allowed TCP flow goes on");
});
