import t from "tap";
import { DropReason } from "../../../src/nat/stats.js";
import * as icmpw from "../../../src/wire/icmp.js";
import { ACK, FIN, RST, SYN } from "../../../src/wire/tcp.js";
import { checksumsOk, expectPacket } from "../../helpers/checker.js";
import { NAT, NAT2, NatHarness, P1, P2, SRV, SRV2, Verdict } from "../../helpers/nat.js";
import { build, ip, truncate } from "../../helpers/packet.js";

t.test(
  "an outbound UDP datagram leaves from the NAT address with its port preserved",
  async (t) => {
    const h = new NatHarness();
    const r = h.send({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 40000,
      dport: 53,
      payload: "query",
    });
    t.equal(r.verdict, Verdict.Forward);
    expectPacket(t, r.out, { src: NAT, dst: SRV, sport: 40000, dport: 53, payload: "query" });
    t.equal(h.stats.packetsInFromSource, 1);
    t.equal(h.stats.packetsOutToDestination, 1);
  },
);

t.test("the reply to an outbound datagram is restored to the inside host", async (t) => {
  const h = new NatHarness();
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 40000, dport: 53 });
  const r = h.send({
    src: SRV,
    dst: NAT,
    proto: "udp",
    sport: 53,
    dport: 40000,
    payload: "answer",
  });
  t.equal(r.verdict, Verdict.Forward);
  expectPacket(t, r.out, { src: SRV, dst: P1, sport: 53, dport: 40000, payload: "answer" });
  t.equal(h.stats.packetsInFromDestination, 1);
  t.equal(h.stats.packetsOutToSource, 1);
});

t.test("the TTL lost on the extra kernel hop is given back", async (t) => {
  const h = new NatHarness();
  const r = h.send({ src: P1, dst: SRV, proto: "udp", sport: 1, dport: 2, ttl: 63 });
  expectPacket(t, r.out, { ttl: 64 });
  const off = new NatHarness({ restoreTtl: false });
  expectPacket(t, off.send({ src: P1, dst: SRV, proto: "udp", sport: 1, dport: 2, ttl: 63 }).out, {
    ttl: 63,
  });
});

t.test(
  "a TCP handshake is translated both ways and counted as attempt and establishment",
  async (t) => {
    const h = new NatHarness();
    const syn = h.send({ src: P1, dst: SRV, sport: 33000, dport: 80, flags: SYN, seq: 100 });
    expectPacket(t, syn.out, { src: NAT, sport: 33000, flags: SYN, seq: 100 });
    const synack = h.send({
      src: SRV,
      dst: NAT,
      sport: 80,
      dport: 33000,
      flags: SYN | ACK,
      ack: 101,
    });
    expectPacket(t, synack.out, { src: SRV, dst: P1, dport: 33000, flags: SYN | ACK, ack: 101 });
    const ack = h.send({
      src: P1,
      dst: SRV,
      sport: 33000,
      dport: 80,
      flags: ACK,
      payload: "GET /",
    });
    expectPacket(t, ack.out, { src: NAT, payload: "GET /" });
    t.equal(h.stats.connectionAttempts, 1);
    t.equal(h.stats.connectionsEstablished, 1);
    t.equal(h.stats.tcpEstablishedNow, 1);
  },
);

t.test("an inbound SYN without a mapping is dropped silently", async (t) => {
  const h = new NatHarness();
  const r = h.send({ src: SRV, dst: NAT, sport: 5000, dport: 40000, flags: SYN });
  t.equal(r.verdict, Verdict.Drop);
  t.equal(r.dropReason, DropReason.Unsolicited);
  t.equal(h.stats.repliesGenerated, 0, "no RST and no ICMP");
});

t.test("unsolicited inbound UDP and echo requests are dropped and counted", async (t) => {
  const h = new NatHarness();
  t.equal(
    h.send({ src: SRV, dst: NAT, proto: "udp", sport: 1, dport: 2 }).dropReason,
    DropReason.Unsolicited,
  );
  t.equal(
    h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 8, icmpId: 7 }).dropReason,
    DropReason.Unsolicited,
  );
  t.equal(h.stats.drops[DropReason.Unsolicited], 2);
});

t.test("one inside endpoint keeps one outside port for every destination (EIM)", async (t) => {
  const h = new NatHarness();
  // Occupy port 40000 so the second host's mapping has to move and the test is not trivially true.
  h.send({ src: P2, dst: SRV, proto: "udp", sport: 40000, dport: 9 });
  const a = h.send({ src: P1, dst: SRV, proto: "udp", sport: 40000, dport: 3478 });
  const b = h.send({ src: P1, dst: SRV2, proto: "udp", sport: 40000, dport: 3479 });
  t.not(a.pkt!.sport, 40000, "the colliding host got another port");
  t.equal(a.pkt!.sport, b.pkt!.sport, "same outside port to both destinations");
});

t.test(
  "two hosts with the same source port get distinct outside ports and both replies arrive",
  async (t) => {
    const h = new NatHarness();
    const a = h.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 7 });
    const b = h.send({ src: P2, dst: SRV, proto: "udp", sport: 5000, dport: 7 });
    t.not(a.pkt!.sport, b.pkt!.sport);
    t.equal(a.pkt!.sport! % 2, 0, "parity kept");
    t.equal(b.pkt!.sport! % 2, 0, "parity kept");
    const ra = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 7, dport: a.pkt!.sport! });
    const rb = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 7, dport: b.pkt!.sport! });
    expectPacket(t, ra.out, { dst: P1, dport: 5000 });
    expectPacket(t, rb.out, { dst: P2, dport: 5000 });
  },
);

t.test("address-and-port-dependent filtering drops a reply from another port", async (t) => {
  const h = new NatHarness();
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  const r = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 54, dport: 4000 });
  t.equal(r.dropReason, DropReason.Filtered);
});

t.test("address-dependent filtering admits another port of the same host only", async (t) => {
  const h = new NatHarness({ filtering: "address-dependent" });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  expectPacket(t, h.send({ src: SRV, dst: NAT, proto: "udp", sport: 54, dport: 4000 }).out, {
    dst: P1,
    dport: 4000,
  });
  t.equal(
    h.send({ src: SRV2, dst: NAT, proto: "udp", sport: 53, dport: 4000 }).dropReason,
    DropReason.Filtered,
  );
});

t.test("endpoint-independent filtering admits any remote to an existing mapping", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  expectPacket(t, h.send({ src: SRV2, dst: NAT, proto: "udp", sport: 999, dport: 4000 }).out, {
    src: SRV2,
    dst: P1,
    dport: 4000,
  });
});

t.test("a UDP mapping does not admit a TCP SYN to the same port (RFC 7857 §3.2)", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 40000, dport: 53 });
  const r = h.send({ src: SRV, dst: NAT, sport: 53, dport: 40000, flags: SYN });
  t.equal(r.verdict, Verdict.Drop);
  t.equal(r.dropReason, DropReason.Unsolicited);
});

t.test("TCP simultaneous open through an EIF mapping reaches ESTABLISHED", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  h.send({ src: P1, dst: SRV, sport: 40000, dport: 5000, flags: SYN });
  const r = h.send({ src: SRV, dst: NAT, sport: 5000, dport: 40000, flags: SYN });
  expectPacket(t, r.out, { dst: P1, dport: 40000, flags: SYN });
  h.send({ src: P1, dst: SRV, sport: 40000, dport: 5000, flags: SYN | ACK });
  t.equal(h.stats.tcpEstablishedNow, 1);
});

t.test("echo identifiers are mapped per host and replies restored", async (t) => {
  const h = new NatHarness();
  const a = h.send({ src: P1, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 4242, icmpSeq: 1 });
  const b = h.send({ src: P2, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 4242, icmpSeq: 1 });
  expectPacket(t, a.out, { src: NAT, icmpType: 8, icmpId: 4242 });
  t.not(b.pkt!.icmpId, 4242, "the second host's id moved");
  const c = h.send({ src: P1, dst: SRV2, proto: "icmp", icmpType: 8, icmpId: 4242, icmpSeq: 2 });
  t.equal(c.pkt!.icmpId, 4242, "same id towards another destination (RFC 5508 REQ-1a)");
  const rb = h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 0, icmpId: b.pkt!.icmpId });
  expectPacket(t, rb.out, { src: SRV, dst: P2, icmpType: 0, icmpId: 4242 });
});

function udpOut(h: NatHarness, sport = 40000, dport = 9999) {
  return h.send({ src: P1, dst: SRV, proto: "udp", sport, dport, payload: "data" });
}

t.test(
  "an inbound port-unreachable is restored: outer destination and embedded source",
  async (t) => {
    const h = new NatHarness();
    const out = udpOut(h, 2222);
    const err = h.send({
      src: SRV,
      dst: NAT,
      proto: "icmp",
      icmpType: 3,
      icmpCode: 3,
      embedded: out.out,
    });
    t.equal(err.verdict, Verdict.Forward);
    expectPacket(t, err.out, {
      src: SRV,
      dst: P1,
      icmpType: 3,
      icmpCode: 3,
      embedded: { src: P1, dst: SRV, sport: 2222, dport: 9999 },
    });
    t.equal(h.stats.icmpErrorsTranslated, 1);
  },
);

t.test(
  "fragmentation-needed for a TCP flow keeps its next-hop MTU and fixes every checksum",
  async (t) => {
    const h = new NatHarness();
    const h2 = h.send({ src: P2, dst: SRV, sport: 40000, dport: 80, flags: SYN });
    const syn = h.send({ src: P1, dst: SRV, sport: 40000, dport: 80, flags: SYN, seq: 7 });
    t.not(syn.pkt!.sport, 40000, "port moved so the embedded port really changes");
    t.ok(h2.pkt);
    const err = h.send({
      src: "198.51.100.1",
      dst: NAT,
      proto: "icmp",
      icmpType: 3,
      icmpCode: 4,
      icmpRest: 1280,
      embedded: syn.out,
    });
    expectPacket(t, err.out, {
      dst: P1,
      icmpType: 3,
      icmpCode: 4,
      icmpRest: 1280,
      embedded: { src: P1, sport: 40000, dport: 80, seq: 7 },
    });
  },
);

t.test("a time-exceeded about an echo request restores the echo identifier", async (t) => {
  const h = new NatHarness();
  h.send({ src: P2, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 9 });
  const ping = h.send({ src: P1, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 9, ttl: 1 });
  const err = h.send({
    src: "198.51.100.1",
    dst: NAT,
    proto: "icmp",
    icmpType: 11,
    icmpCode: 0,
    embedded: truncate(ping.out, 28),
  });
  expectPacket(t, err.out, { dst: P1, icmpType: 11, embedded: { src: P1, icmpId: 9 } });
});

t.test("an error truncated to 8 bytes of transport header is still translated", async (t) => {
  const h = new NatHarness();
  h.send({ src: P2, dst: SRV, sport: 40000, dport: 80, flags: SYN });
  const syn = h.send({ src: P1, dst: SRV, sport: 40000, dport: 80, flags: SYN });
  const err = h.send({
    src: SRV,
    dst: NAT,
    proto: "icmp",
    icmpType: 3,
    icmpCode: 1,
    embedded: truncate(syn.out, 28),
  });
  expectPacket(t, err.out, { dst: P1, embedded: { src: P1, sport: 40000 } });
});

t.test("an embedded header with IP options is skipped over correctly", async (t) => {
  const h = new NatHarness();
  const out = h.send({
    src: P1,
    dst: SRV,
    proto: "udp",
    sport: 1234,
    dport: 53,
    ipOptions: new Uint8Array([1, 1, 1, 0]),
  });
  const err = h.send({
    src: SRV,
    dst: NAT,
    proto: "icmp",
    icmpType: 3,
    icmpCode: 3,
    embedded: out.out,
  });
  expectPacket(t, err.out, { dst: P1, embedded: { src: P1, sport: 1234, dport: 53 } });
});

t.test("errors with a bad ICMP checksum or a bad embedded IP checksum are dropped", async (t) => {
  const h = new NatHarness();
  const out = udpOut(h, 3000);
  const bad = build({
    src: SRV,
    dst: NAT,
    proto: "icmp",
    icmpType: 3,
    icmpCode: 3,
    embedded: out.out,
  });
  bad[bad.length - 1]! ^= 0xff;
  t.equal(h.processBytes(bad).dropReason, DropReason.IcmpBadChecksum);
  const emb = out.out.slice();
  emb[10]! ^= 0x01; // embedded IP header checksum
  const r = h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 3, icmpCode: 3, embedded: emb });
  t.equal(r.dropReason, DropReason.IcmpErrorBadEmbedded);
});

t.test(
  "an error about no known flow is dropped, and an error never refreshes a flow",
  async (t) => {
    const h = new NatHarness();
    const out = udpOut(h, 3001);
    const stranger = build({ src: NAT, dst: SRV, proto: "udp", sport: 7777, dport: 9999 });
    t.equal(
      h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 3, icmpCode: 3, embedded: stranger })
        .dropReason,
      DropReason.IcmpErrorNoFlow,
    );
    h.wait(200);
    h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 3, icmpCode: 3, embedded: out.out });
    h.wait(101); // 301 s after the datagram: past the 300 s UDP timeout unless the error refreshed it
    const reply = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 9999, dport: 3001 });
    t.equal(reply.verdict, Verdict.Drop, "the flow expired on schedule (RFC 5508 REQ-6)");
  },
);

t.test(
  "an inside host's port-unreachable leaves from the NAT address with the outside port inside",
  async (t) => {
    const h = new NatHarness({ filtering: "endpoint-independent" });
    h.send({ src: P2, dst: SRV, proto: "udp", sport: 6000, dport: 53 });
    const out = h.send({ src: P1, dst: SRV, proto: "udp", sport: 6000, dport: 53 });
    const oport = out.pkt!.sport!;
    const inb = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 53, dport: oport });
    const err = h.send({
      src: P1,
      dst: SRV,
      proto: "icmp",
      icmpType: 3,
      icmpCode: 3,
      embedded: inb.out,
    });
    expectPacket(t, err.out, {
      src: NAT,
      dst: SRV,
      icmpType: 3,
      icmpCode: 3,
      embedded: { src: SRV, dst: NAT, sport: 53, dport: oport },
    });
  },
);

t.test("UDP hairpinning shows each inside host the other's outside endpoint", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  const m1 = h.send({ src: P1, dst: SRV, proto: "udp", sport: 7000, dport: 3478 });
  const port1 = m1.pkt!.sport!;
  const hp = h.send({ src: P2, dst: NAT, proto: "udp", sport: 7001, dport: port1, payload: "hi" });
  t.equal(hp.verdict, Verdict.Forward);
  const p2out = expectPacket(t, hp.out, { src: NAT, dst: P1, dport: 7000, payload: "hi" });
  const back = h.send({ src: P1, dst: NAT, proto: "udp", sport: 7000, dport: p2out!.sport! });
  expectPacket(t, back.out, { src: NAT, sport: port1, dst: P2, dport: 7001 });
  t.ok(h.stats.hairpinPackets >= 2);
});

t.test("TCP hairpinning connects one inside host to another through its mapping", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  const m1 = h.send({ src: P1, dst: SRV, sport: 8000, dport: 80, flags: SYN });
  const port1 = m1.pkt!.sport!;
  const syn = h.send({ src: P2, dst: NAT, sport: 8001, dport: port1, flags: SYN });
  const got = expectPacket(t, syn.out, { src: NAT, dst: P1, dport: 8000, flags: SYN });
  const synack = h.send({ src: P1, dst: NAT, sport: 8000, dport: got!.sport!, flags: SYN | ACK });
  expectPacket(t, synack.out, { src: NAT, sport: port1, dst: P2, dport: 8001, flags: SYN | ACK });
});

t.test("an ICMP error about a hairpinned datagram is hairpinned back to its sender", async (t) => {
  const h = new NatHarness({ filtering: "endpoint-independent" });
  const port1 = h.send({ src: P1, dst: SRV, proto: "udp", sport: 7100, dport: 1 }).pkt!.sport!;
  const hp = h.send({ src: P2, dst: NAT, proto: "udp", sport: 7101, dport: port1 });
  const err = h.send({
    src: P1,
    dst: NAT,
    proto: "icmp",
    icmpType: 3,
    icmpCode: 3,
    embedded: hp.out,
  });
  expectPacket(t, err.out, {
    src: NAT,
    dst: P2,
    icmpType: 3,
    embedded: { src: P2, sport: 7101, dst: NAT, dport: port1 },
  });
});

t.test("a UDP checksum of zero stays zero", async (t) => {
  const h = new NatHarness();
  const r = h.send({ src: P1, dst: SRV, proto: "udp", sport: 1, dport: 2, udpZeroChecksum: true });
  expectPacket(t, r.out, { src: NAT, l4Checksum: 0 });
});

t.test("a bad transport checksum is carried, never repaired", async (t) => {
  const h = new NatHarness();
  const r = h.send({ src: P1, dst: SRV, sport: 1, dport: 2, flags: SYN, badL4Checksum: true });
  t.equal(r.verdict, Verdict.Forward);
  t.notOk(checksumsOk(r.out).ok, "still wrong after translation");
});

t.test(
  "a GSO TCP super-packet with NEEDS_CSUM is rewritten once, pseudo-header only",
  async (t) => {
    const h = new NatHarness({ vnetHdr: true });
    const payload = new Uint8Array(20000).fill(0x61);
    const spec = {
      src: P1,
      dst: SRV,
      sport: 40000,
      dport: 5201,
      flags: ACK,
      payload,
      vnet: { flags: 1, gsoType: 1, gsoSize: 1448 },
    };
    const r = h.send(spec);
    t.equal(r.verdict, Verdict.Forward);
    expectPacket(t, r.out, {
      src: NAT,
      sport: 40000,
      vnet: { flags: 1, gsoType: 1, gsoSize: 1448 },
    });
    const segs = Math.ceil(20000 / 1448);
    t.equal(h.stats.packetsOutToDestination, segs, "a super-packet counts as its segments");
  },
);

t.test(
  "a plain packet behind a virtio header with NEEDS_CSUM keeps a valid partial checksum",
  async (t) => {
    const h = new NatHarness({ vnetHdr: true });
    h.send({ src: P2, dst: SRV, proto: "udp", sport: 5555, dport: 53, vnet: { flags: 1 } });
    const r = h.send({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 5555,
      dport: 53,
      vnet: { flags: 1 },
    });
    t.not(r.pkt!.sport, 5555);
    expectPacket(t, r.out, { src: NAT });
    const rb = h.send({
      src: SRV,
      dst: NAT,
      proto: "udp",
      sport: 53,
      dport: r.pkt!.sport!,
      vnet: {},
    });
    expectPacket(t, rb.out, { dst: P1, dport: 5555 });
  },
);

t.test("malformed packets are dropped by reason", async (t) => {
  const h = new NatHarness();
  const good = build({ src: P1, dst: SRV, sport: 1, dport: 2, flags: SYN });
  t.equal(h.processBytes(good.subarray(0, 12)).dropReason, DropReason.MalformedIp, "short");
  const v6 = good.slice();
  v6[0] = 0x65;
  t.equal(h.processBytes(v6).dropReason, DropReason.NotNatTraffic, "IPv6 is not ours");
  const v5 = good.slice();
  v5[0] = 0x55;
  t.equal(h.processBytes(v5).dropReason, DropReason.MalformedIp, "version 5");
  const longTl = good.slice();
  longTl[2] = 0xff;
  t.equal(h.processBytes(longTl).dropReason, DropReason.MalformedIp, "total length past the end");
  // A TCP header cut to 10 bytes, with the IP total length saying so.
  const shortTcp = good.slice(0, 30);
  shortTcp[3] = 30;
  t.equal(h.processBytes(shortTcp).dropReason, DropReason.MalformedL4, "truncated TCP");
  const gre = build({ src: P1, dst: SRV, proto: 47, payload: new Uint8Array(8) });
  t.equal(h.processBytes(gre).dropReason, DropReason.UnsupportedProtocol);
  const other = build({ src: "192.0.2.1", dst: SRV, proto: "udp", sport: 1, dport: 2 });
  t.equal(h.processBytes(other).dropReason, DropReason.NotNatTraffic);
  const spoof = build({ src: NAT, dst: NAT, proto: "udp", sport: 1, dport: 2 });
  t.equal(h.processBytes(spoof).dropReason, DropReason.Spoofed);
  t.equal(h.stats.dropTotal(), 8);
});

t.test("an RST is translated and the flow lingers for the transitory timeout", async (t) => {
  const h = new NatHarness();
  h.send({ src: P1, dst: SRV, sport: 9000, dport: 80, flags: SYN });
  h.send({ src: SRV, dst: NAT, sport: 80, dport: 9000, flags: SYN | ACK });
  const rst = h.send({ src: SRV, dst: NAT, sport: 80, dport: 9000, flags: RST });
  expectPacket(t, rst.out, { dst: P1, flags: RST });
  h.wait(239);
  t.equal(
    h.send({ src: SRV, dst: NAT, sport: 80, dport: 9000, flags: RST }).verdict,
    Verdict.Forward,
  );
  h.wait(241);
  t.equal(h.send({ src: SRV, dst: NAT, sport: 80, dport: 9000, flags: ACK }).verdict, Verdict.Drop);
});

t.test("a FIN exchange moves the flow to the transitory timeout", async (t) => {
  const h = new NatHarness();
  h.send({ src: P1, dst: SRV, sport: 9100, dport: 80, flags: SYN });
  h.send({ src: SRV, dst: NAT, sport: 80, dport: 9100, flags: SYN | ACK });
  h.send({ src: P1, dst: SRV, sport: 9100, dport: 80, flags: FIN | ACK });
  h.send({ src: SRV, dst: NAT, sport: 80, dport: 9100, flags: FIN | ACK });
  t.equal(h.stats.tcpEstablishedNow, 0);
  h.wait(241);
  t.equal(h.send({ src: SRV, dst: NAT, sport: 80, dport: 9100, flags: ACK }).verdict, Verdict.Drop);
});

t.test("the aws preset answers a segment of an expired connection with an RST", async (t) => {
  const h = new NatHarness({
    rstOnExpired: true,
    timeouts: { tcpEstablished: 350, tcpTransitory: 350, udp: 350, icmp: 350 },
  });
  h.send({ src: P1, dst: SRV, sport: 9200, dport: 80, flags: SYN, seq: 1 });
  h.send({ src: SRV, dst: NAT, sport: 80, dport: 9200, flags: SYN | ACK, seq: 500, ack: 2 });
  h.wait(351);
  const r = h.send({
    src: P1,
    dst: SRV,
    sport: 9200,
    dport: 80,
    flags: ACK,
    seq: 2,
    ack: 501,
    payload: "late",
  });
  t.equal(r.verdict, Verdict.Reply);
  expectPacket(t, r.out, { src: SRV, dst: P1, sport: 80, dport: 9200, flags: RST, seq: 501 });
  t.equal(h.stats.idleTimeouts, 1);
});

t.test("without the aws preset a mid-stream segment is picked up rather than reset", async (t) => {
  const h = new NatHarness();
  const r = h.send({ src: P1, dst: SRV, sport: 9300, dport: 80, flags: ACK, payload: "x" });
  t.equal(r.verdict, Verdict.Forward);
  expectPacket(t, r.out, { src: NAT });
});

t.test("an inside host's SYN-ACK without a flow creates no mapping and is counted", async (t) => {
  // An outsider reached P1 by a route around the NAT and sent it a SYN; P1 answers through us.
  const h = new NatHarness();
  const r = h.send({
    src: P1,
    dst: SRV,
    sport: 22,
    dport: 40000,
    flags: SYN | ACK,
    seq: 9,
    ack: 2,
  });
  t.equal(r.verdict, Verdict.Drop, "dropped silently");
  t.equal(r.out.length, 0, "nothing goes out");
  t.equal(h.stats.drops[DropReason.TcpSynAckNoFlow], 1, "counted as tcp_syn_ack_no_flow");
  t.equal(h.nat.table.active, 0, "no flow");
  t.equal(h.nat.table.mappings, 0, "no mapping");
  t.equal(h.nat.table.hosts.count, 0, "no per-host entry");
  t.equal(h.stats.flowsCreated, 0);
  // The outsider's ACK that would complete the handshake finds nothing to enter by.
  const ack = h.send({ src: SRV, dst: NAT, sport: 40000, dport: 22, flags: ACK, seq: 2, ack: 10 });
  t.equal(ack.verdict, Verdict.Drop);
  t.equal(h.stats.drops[DropReason.Unsolicited], 1);
});

t.test("mid-stream pick-up creates a flow from a bare ACK only", async (t) => {
  const refused: [string, number][] = [
    ["RST", RST],
    ["RST|ACK", RST | ACK],
    ["FIN", FIN],
    ["FIN|ACK", FIN | ACK],
    ["no flags", 0],
    ["PSH", 0x08],
    ["URG|PSH", 0x28],
    ["SYN|FIN", SYN | FIN],
    ["SYN|RST", SYN | RST],
  ];
  for (const [name, flags] of refused) {
    const h = new NatHarness();
    const r = h.send({ src: P1, dst: SRV, sport: 9400, dport: 80, flags, payload: "x" });
    t.equal(r.verdict, Verdict.Drop, `${name}: dropped`);
    t.equal(h.stats.drops[DropReason.TcpNoFlow], 1, `${name}: counted as tcp_no_flow`);
    t.equal(h.nat.table.active, 0, `${name}: no flow`);
  }
  for (const [name, flags] of [
    ["ACK", ACK],
    ["PSH|ACK", 0x08 | ACK],
  ] as [string, number][]) {
    const h = new NatHarness();
    const r = h.send({ src: P1, dst: SRV, sport: 9400, dport: 80, flags, payload: "x" });
    t.equal(r.verdict, Verdict.Forward, `${name}: picked up`);
    t.equal(h.nat.table.active, 1, `${name}: one flow`);
    t.equal(h.stats.dropTotal(), 0, `${name}: nothing dropped`);
  }
});

t.test(
  "the aws preset answers a SYN-ACK or FIN without a flow with an RST, not a flow",
  async (t) => {
    for (const flags of [SYN | ACK, FIN | ACK, ACK]) {
      const h = new NatHarness({ rstOnExpired: true });
      const r = h.send({ src: P1, dst: SRV, sport: 22, dport: 40000, flags, seq: 9, ack: 2 });
      t.equal(r.verdict, Verdict.Reply, `flags ${flags}: answered`);
      expectPacket(t, r.out, { src: SRV, dst: P1, sport: 40000, dport: 22, flags: RST, seq: 2 });
      t.equal(h.nat.table.active, 0, `flags ${flags}: no flow`);
      const why = flags === (SYN | ACK) ? DropReason.TcpSynAckNoFlow : DropReason.TcpNoFlow;
      t.equal(h.stats.drops[why], 1, `flags ${flags}: counted by reason`);
    }
    const h = new NatHarness({ rstOnExpired: true });
    const r = h.send({ src: P1, dst: SRV, sport: 22, dport: 40000, flags: RST | ACK });
    t.equal(r.verdict, Verdict.Drop, "an RST is never answered");
  },
);

t.test("a host over its quota gets ICMP 3/13 and keeps its existing mappings", async (t) => {
  const h = new NatHarness({ perHostQuota: 2 });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 1000 + 1024, dport: 1 });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 1002 + 1024, dport: 1 });
  const r = h.send({ src: P1, dst: SRV, proto: "udp", sport: 1004 + 1024, dport: 1, payload: "x" });
  t.equal(r.verdict, Verdict.Reply);
  expectPacket(t, r.out, {
    dst: P1,
    icmpType: icmpw.DEST_UNREACH,
    icmpCode: icmpw.CODE_ADMIN_PROHIBITED,
    embedded: { src: P1, sport: 2028 },
  });
  t.equal(h.stats.drops[DropReason.QuotaExceeded], 1);
  const ok = h.send({ src: P1, dst: SRV2, proto: "udp", sport: 2024, dport: 1 });
  t.equal(ok.verdict, Verdict.Forward, "an existing mapping still works");
  const p2 = h.send({ src: P2, dst: SRV, proto: "udp", sport: 2028, dport: 1 });
  t.equal(p2.verdict, Verdict.Forward, "another host is unaffected");
  const silent = new NatHarness({ perHostQuota: 1, icmpAdminProhibited: false });
  silent.send({ src: P1, dst: SRV, proto: "udp", sport: 5000, dport: 1 });
  t.equal(
    silent.send({ src: P1, dst: SRV, proto: "udp", sport: 5002, dport: 1 }).verdict,
    Verdict.Drop,
  );
});

t.test("when ports run out the sender hears 3/13 and the drop is counted", async (t) => {
  const h = new NatHarness({ portLo: 20000, portHi: 20001 });
  t.equal(
    h.send({ src: P1, dst: SRV, proto: "udp", sport: 20000, dport: 1 }).verdict,
    Verdict.Forward,
  );
  t.equal(
    h.send({ src: P2, dst: SRV, proto: "udp", sport: 20001, dport: 1 }).verdict,
    Verdict.Forward,
  );
  const r = h.send({ src: P2, dst: SRV, proto: "udp", sport: 30000, dport: 1 });
  t.equal(r.verdict, Verdict.Reply);
  t.equal(h.stats.drops[DropReason.PortExhausted], 1);
  t.ok(h.stats.portAllocationErrors >= 1);
});

t.test("paired pooling keeps all of one host's protocols on one NAT address", async (t) => {
  const h = new NatHarness({ natAddresses: [ip(NAT), ip(NAT2)] });
  for (const host of [P1, P2, "10.0.1.4", "10.0.1.5", "10.0.1.6"]) {
    const u = h.send({ src: host, dst: SRV, proto: "udp", sport: 1500, dport: 1 }).pkt!.src;
    const tc = h.send({ src: host, dst: SRV, sport: 1600, dport: 1, flags: SYN }).pkt!.src;
    const ic = h.send({ src: host, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 3 }).pkt!.src;
    t.ok(u === tc && tc === ic, `${host}: ${u} ${tc} ${ic}`);
  }
  const r = h.send({ src: SRV, dst: NAT2, proto: "udp", sport: 1, dport: 1 });
  t.equal(r.verdict, Verdict.Drop, "the second address is a NAT address too");
});

t.test("fragments follow their first fragment and get one fresh IP ID per datagram", async (t) => {
  const h = new NatHarness();
  const first1 = h.send({
    src: P1,
    dst: SRV,
    proto: "udp",
    sport: 9999,
    dport: 9999,
    ipId: 77,
    mf: true,
    payload: new Uint8Array(1000),
  });
  const first2 = h.send({
    src: P2,
    dst: SRV,
    proto: "udp",
    sport: 9998,
    dport: 9999,
    ipId: 77,
    mf: true,
    payload: new Uint8Array(1000),
  });
  t.not(
    first1.pkt!.ipId,
    first2.pkt!.ipId,
    "two hosts' datagrams no longer share an ID (RFC 6864)",
  );
  const rest1 = h.send({
    src: P1,
    dst: SRV,
    proto: 17,
    ipId: 77,
    fragOffset: 1008,
    payload: new Uint8Array(500),
  });
  expectPacket(t, rest1.out, { src: NAT, ipId: first1.pkt!.ipId });
  const rest2 = h.send({
    src: P2,
    dst: SRV,
    proto: 17,
    ipId: 77,
    fragOffset: 1008,
    payload: new Uint8Array(500),
  });
  expectPacket(t, rest2.out, { src: NAT, ipId: first2.pkt!.ipId });
  const orphan = h.send({
    src: P1,
    dst: SRV,
    proto: 17,
    ipId: 78,
    fragOffset: 8,
    payload: new Uint8Array(8),
  });
  // Before its first fragment: held for it (RFC 4787 REQ-14; see fragments.test.ts), not dropped.
  t.equal(orphan.verdict, Verdict.Drop);
  t.equal(orphan.dropReason, -1, "held, not counted as a drop");
  t.equal(h.stats.fragmentsHeld, 1);
  t.equal(h.stats.drops[DropReason.FragmentNoState], 0);
  // And inbound: a fragmented reply.
  const in1 = h.send({
    src: SRV,
    dst: NAT,
    proto: "udp",
    sport: 9999,
    dport: 9999,
    ipId: 5,
    mf: true,
    payload: new Uint8Array(1000),
  });
  expectPacket(t, in1.out, { dst: P1, dport: 9999 });
  const in2 = h.send({
    src: SRV,
    dst: NAT,
    proto: 17,
    ipId: 5,
    fragOffset: 1008,
    payload: new Uint8Array(8),
  });
  expectPacket(t, in2.out, { dst: P1, ipId: 5 });
});

t.test("flows expire after their protocol's timeout on the clock", async (t) => {
  const h = new NatHarness();
  h.send({ src: P1, dst: SRV, proto: "icmp", icmpType: 8, icmpId: 1 });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 1, dport: 1 });
  h.wait(59);
  t.equal(
    h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 0, icmpId: 1 }).verdict,
    Verdict.Forward,
    "echo at 59 s",
  );
  h.wait(61);
  t.equal(
    h.send({ src: SRV, dst: NAT, proto: "icmp", icmpType: 0, icmpId: 1 }).verdict,
    Verdict.Drop,
    "echo at 120 s",
  );
  h.wait(299 - 120);
  t.equal(
    h.send({ src: SRV, dst: NAT, proto: "udp", sport: 1, dport: 1 }).verdict,
    Verdict.Forward,
    "udp refreshed by reply at 299 s",
  );
  h.wait(301);
  t.equal(h.send({ src: SRV, dst: NAT, proto: "udp", sport: 1, dport: 1 }).verdict, Verdict.Drop);
});
