// The test helpers themselves: the builder and checker are compared with bytes scapy 2.5.0
// produced (a third, independent implementation), so that wire tests built on them mean something.
import t from "tap";
import { type Asserter, checksumsOk, expectPacket, flagNames } from "../../helpers/checker.js";
import {
  build,
  internetChecksum,
  ip,
  ipStr,
  parse,
  pseudoSum,
  truncate,
  VNET_LEN,
} from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

// scapy: IP(src="10.99.0.2", dst="192.0.2.10", ttl=64, id=0x1234, flags="DF") /
//        TCP(sport=40000, dport=80, flags="S", seq=1000, window=65535, options=[]) / b"hello"
const SCAPY_TCP = h(
  "4500002d1234400040065c280a630002c000020a9c400050000003e8000000005002ffffff23000068656c6c6f",
);
// IP(ttl=63, id=7) / UDP(sport=5353, dport=53) / b"query!"
const SCAPY_UDP = h("45000022000700003f11af550a630002c000020a14e90035000ece3b717565727921");
// IP(id=1) / ICMP(type=8, id=0x4242, seq=3) / b"abcdefgh"
const SCAPY_ECHO = h("45000024000100004001ae690a630002c000020a08002425424200036162636465666768");
// IP(id=9, options=[IPOption_RR(routers=["0.0.0.0"])]) / UDP(sport=1, dport=2) / b"x"
const SCAPY_OPTS = h("47000025000900004011a1490a630002c000020a0707040000000000000100020009bb6978");
// inner = IP(src="192.0.2.10", dst="10.99.0.2", ttl=1, id=5) / UDP(sport=33434, dport=7) / b"0123456789"
const SCAPY_INNER = h(
  "45000026000500000111ed53c000020a0a630002829a00070012abaf30313233343536373839",
);
// IP(src="192.0.2.1", dst="192.0.2.10", id=0) / ICMP(type=3, code=4, nexthopmtu=1280) / raw(inner)[:28]
const SCAPY_FRAG_NEEDED = h(
  "45000038000000004001f6b9c0000201c000020a0304c9980000050045000026000500000111ed53c000020a0a630002829a00070012abaf",
);

t.test("ip() and ipStr() convert dotted quads to host-order numbers and back", async (t) => {
  t.equal(ip("10.0.1.2"), 0x0a000102);
  t.equal(ip("255.255.255.255"), 0xffffffff);
  t.equal(ipStr(0xc000020a), "192.0.2.10");
  t.equal(ipStr(ip("203.0.113.200")), "203.0.113.200");
  t.throws(() => ip("10.0.1"), "three octets are rejected");
  t.throws(() => ip("10.0.1.256"), "an octet above 255 is rejected");
});

t.test(
  "build() produces the same bytes as scapy for TCP, UDP, echo, options and an ICMP error",
  async (t) => {
    t.equal(
      toHex(
        build({
          src: "10.99.0.2",
          dst: "192.0.2.10",
          ipId: 0x1234,
          df: true,
          sport: 40000,
          dport: 80,
          flags: 0x02,
          seq: 1000,
          payload: "hello",
        }),
      ),
      toHex(SCAPY_TCP),
    );
    t.equal(
      toHex(
        build({
          src: "10.99.0.2",
          dst: "192.0.2.10",
          proto: "udp",
          ttl: 63,
          ipId: 7,
          sport: 5353,
          dport: 53,
          payload: "query!",
        }),
      ),
      toHex(SCAPY_UDP),
    );
    t.equal(
      toHex(
        build({
          src: "10.99.0.2",
          dst: "192.0.2.10",
          proto: "icmp",
          ipId: 1,
          icmpId: 0x4242,
          icmpSeq: 3,
          payload: "abcdefgh",
        }),
      ),
      toHex(SCAPY_ECHO),
    );
    t.equal(
      toHex(
        build({
          src: "10.99.0.2",
          dst: "192.0.2.10",
          proto: "udp",
          ipId: 9,
          ipOptions: h("0707040000000000"),
          sport: 1,
          dport: 2,
          payload: "x",
        }),
      ),
      toHex(SCAPY_OPTS),
    );
    const inner = build({
      src: "192.0.2.10",
      dst: "10.99.0.2",
      proto: "udp",
      ttl: 1,
      ipId: 5,
      sport: 33434,
      dport: 7,
      payload: "0123456789",
    });
    t.equal(toHex(inner), toHex(SCAPY_INNER));
    t.equal(
      toHex(
        build({
          src: "192.0.2.1",
          dst: "192.0.2.10",
          proto: "icmp",
          icmpType: 3,
          icmpCode: 4,
          icmpRest: 1280,
          embedded: truncate(inner),
        }),
      ),
      toHex(SCAPY_FRAG_NEEDED),
    );
  },
);

t.test("parse() reads scapy's packets, including an ICMP error's truncated datagram", async (t) => {
  const tcp = parse(SCAPY_TCP);
  t.match(tcp, {
    src: "10.99.0.2",
    dst: "192.0.2.10",
    proto: 6,
    ttl: 64,
    ipId: 0x1234,
    df: true,
    sport: 40000,
    dport: 80,
    flags: 0x02,
    seq: 1000,
  });
  t.equal(Buffer.from(tcp.payload).toString(), "hello");
  t.equal(parse(SCAPY_OPTS).ihl, 28, "IHL counts the options");
  t.equal(Buffer.from(parse(SCAPY_OPTS).payload).toString(), "x");
  const err = parse(SCAPY_FRAG_NEEDED);
  t.match(err, { icmpType: 3, icmpCode: 4, icmpRest: 1280 });
  t.match(err.embedded, {
    src: "192.0.2.10",
    dst: "10.99.0.2",
    proto: 17,
    totalLength: 38,
    sport: 33434,
    dport: 7,
    udpLength: 18,
    truncated: false,
  });
  const cut = parse(
    build({
      src: "192.0.2.1",
      dst: "10.99.0.2",
      proto: "icmp",
      icmpType: 11,
      embedded: truncate(
        build({ src: "10.99.0.2", dst: "192.0.2.10", sport: 1, dport: 2, seq: 7 }),
      ),
    }),
  );
  t.match(cut.embedded, { sport: 1, dport: 2, seq: 7, truncated: true });
  t.equal(cut.embedded?.flags, undefined, "the TCP flags are beyond the 8 bytes kept");
  t.throws(() => parse(SCAPY_TCP.subarray(0, 30)), "a packet shorter than its total length throws");
});

t.test("checksumsOk() accepts correct packets and names the first wrong checksum", async (t) => {
  for (const [name, p] of Object.entries({
    SCAPY_TCP,
    SCAPY_UDP,
    SCAPY_ECHO,
    SCAPY_OPTS,
    SCAPY_FRAG_NEEDED,
  })) {
    t.same(checksumsOk(p), { ok: true }, `${name} is correct`);
  }
  const flip = (p: Uint8Array, at: number) => {
    const c = p.slice();
    c[at] ^= 0x10;
    return c;
  };
  t.match(checksumsOk(flip(SCAPY_TCP, 8)), { ok: false, why: /^IP header checksum/ });
  t.match(checksumsOk(flip(SCAPY_TCP, 42)), { ok: false, why: /^TCP checksum/ });
  t.match(checksumsOk(flip(SCAPY_UDP, 33)), { ok: false, why: /^UDP checksum/ });
  t.match(checksumsOk(flip(SCAPY_ECHO, 30)), { ok: false, why: /^ICMP checksum/ });
  t.match(checksumsOk(flip(SCAPY_OPTS, 22)), { ok: false, why: /^IP header checksum/ });
  // Corrupt the embedded TTL and fix the outer ICMP checksum, so only the embedded header is wrong.
  const e = flip(SCAPY_FRAG_NEEDED, 20 + 8 + 8);
  const c = internetChecksum(
    e.map((b, i) => (i === 22 || i === 23 ? 0 : b)),
    20,
    e.length,
  );
  e[22] = c >>> 8;
  e[23] = c & 0xff;
  t.match(checksumsOk(e), { ok: false, why: /^embedded IP header checksum/ });
  // The embedded UDP checksum is not checked: the datagram is usually truncated.
  const u = SCAPY_FRAG_NEEDED.slice();
  u[u.length - 1] ^= 0xff;
  const uc = internetChecksum(
    u.map((b, i) => (i === 22 || i === 23 ? 0 : b)),
    20,
    u.length,
  );
  u[22] = uc >>> 8;
  u[23] = uc & 0xff;
  t.same(checksumsOk(u), { ok: true }, "a wrong embedded UDP checksum is not an error");
});

t.test("build() breaks exactly the checksum it is told to break", async (t) => {
  const base = { src: "10.99.0.2", dst: "192.0.2.10", sport: 1000, dport: 2000 } as const;
  t.match(checksumsOk(build({ ...base, badIpChecksum: true })), { ok: false, why: /^IP header/ });
  t.match(checksumsOk(build({ ...base, badL4Checksum: true })), { ok: false, why: /^TCP/ });
  t.match(checksumsOk(build({ ...base, proto: "udp", badL4Checksum: true })), {
    ok: false,
    why: /^UDP/,
  });
  t.match(checksumsOk(build({ ...base, proto: "icmp", badL4Checksum: true })), {
    ok: false,
    why: /^ICMP/,
  });
  const none = build({ ...base, proto: "udp", udpZeroChecksum: true });
  t.equal(parse(none).l4Checksum, 0);
  t.same(checksumsOk(none), { ok: true }, "a UDP checksum of 0 means none and is accepted");
  t.match(checksumsOk(none, 0, { allowUdpZero: false }), { ok: false });
  for (let p = 0; p < 2000; p++) {
    // Some payload makes the UDP sum come out as 0, which must be sent as 0xffff (RFC 768).
    const pk = build({ ...base, proto: "udp", payload: Uint8Array.of(p >>> 8, p & 0xff) });
    if (parse(pk).l4Checksum === 0) t.fail(`payload ${p} produced a zero UDP checksum`);
    if (!checksumsOk(pk).ok) t.fail(`payload ${p}: ${checksumsOk(pk).why}`);
  }
});

t.test(
  "a NEEDS_CSUM vnet packet holds the pseudo-header sum, which completes to the full checksum",
  async (t) => {
    const spec = {
      src: "10.99.0.2",
      dst: "192.0.2.10",
      sport: 40000,
      dport: 443,
      flags: 0x18,
      payload: new Uint8Array(3000).fill(7),
    } as const;
    const partial = build({ ...spec, vnet: { flags: 1, gsoType: 1, gsoSize: 1448 } });
    const full = build(spec);
    t.equal(partial.length, full.length + VNET_LEN);
    const p = parse(partial);
    t.match(p.vnet, {
      flags: 1,
      gsoType: 1,
      gsoSize: 1448,
      hdrLen: 40,
      csumStart: 20,
      csumOffset: 16,
    });
    t.equal(p.l4Checksum, pseudoSum(ip(spec.src), ip(spec.dst), 6, 3020));
    t.same(checksumsOk(partial), { ok: true });
    t.match(checksumsOk(full.slice(), 0, { vnet: false }), { ok: true });
    // What the kernel does with CHECKSUM_PARTIAL: sum from csum_start with the field as the seed.
    const l4 = partial.subarray(VNET_LEN + 20);
    t.equal(
      internetChecksum(l4),
      parse(full).l4Checksum,
      "completing the sum gives the full checksum",
    );
    // A full checksum where a partial one is expected is wrong, and the reverse too.
    const wrong = build({ ...spec, vnet: { flags: 1 }, partialChecksum: false });
    t.match(checksumsOk(wrong), { ok: false, why: /partial checksum/ });
    const noFlag = build({ ...spec, vnet: { flags: 0 }, partialChecksum: true });
    t.match(checksumsOk(noFlag), { ok: false, why: /^TCP checksum/ });
    const badOffset = build({ ...spec, vnet: { flags: 1, csumOffset: 6 } });
    t.match(checksumsOk(badOffset), { ok: false, why: /csum_offset/ });
  },
);

/** An Asserter that records instead of reporting, to test expectPacket's verdicts. */
function recorder() {
  const fails: string[] = [];
  const a: Asserter = {
    equal(found, wanted, message) {
      if (found !== wanted) fails.push(`${message}: got ${String(found)}`);
      return found === wanted;
    },
    ok(found, message) {
      if (!found) fails.push(String(message));
      return Boolean(found);
    },
    fail(message) {
      fails.push(String(message));
      return false;
    },
  };
  return { a, fails };
}

t.test("expectPacket() passes a matching packet and names each mismatching field", async (t) => {
  const pkt = build({
    src: "10.99.0.2",
    dst: "192.0.2.10",
    sport: 1,
    dport: 2,
    flags: 0x12,
    payload: "hi",
  });
  const good = recorder();
  const got = expectPacket(good.a, pkt, {
    src: "10.99.0.2",
    dst: "192.0.2.10",
    proto: "tcp",
    sport: 1,
    dport: 2,
    flags: 0x12,
    payload: "hi",
  });
  t.same(good.fails, []);
  expectPacket(t, pkt, { src: "10.99.0.2", sport: 1, flags: 0x12 }); // a real tap Test fits Asserter
  t.equal(got?.sport, 1);
  const bad = recorder();
  expectPacket(bad.a, pkt, { dst: "192.0.2.11", dport: 3, flags: 0x02 });
  t.same(bad.fails, [
    "dst is 192.0.2.11: got 192.0.2.10",
    "dport is 3: got 2",
    "TCP flags are SYN: got SYN|ACK",
  ]);
  const corrupt = pkt.slice();
  corrupt[corrupt.length - 1] ^= 1;
  const c = recorder();
  expectPacket(c.a, corrupt, {});
  t.match(c.fails, [/^checksums are correct: TCP checksum/]);
  const trunc = recorder();
  t.equal(expectPacket(trunc.a, pkt.subarray(0, 30), {}), undefined);
  t.match(trunc.fails, [/^packet parses/]);
  const e = recorder();
  expectPacket(
    e.a,
    build({
      src: "192.0.2.1",
      dst: "10.99.0.2",
      proto: "icmp",
      icmpType: 3,
      icmpCode: 3,
      embedded: truncate(pkt),
    }),
    { icmpType: 3, embedded: { src: "10.99.0.2", dport: 9 } },
  );
  t.same(e.fails, ["embedded dport is 9: got 2"]);
  t.equal(flagNames(0), "none");
});
