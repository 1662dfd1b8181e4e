// Packets the Linux kernel produced (test/fixtures/*.pcap, made by test/fixtures/capture.sh):
// src/wire must parse every one, the independent checker must find every kernel checksum valid, and
// the kernel's ICMP errors must carry embedded headers that src/wire reads as the kernel meant.
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import * as icmp from "../../../src/wire/icmp.js";
import * as ipv4 from "../../../src/wire/ipv4.js";
import * as tcp from "../../../src/wire/tcp.js";
import * as udp from "../../../src/wire/udp.js";
import * as vnet from "../../../src/wire/vnet.js";
import { checksumsOk, expectPacket } from "../../helpers/checker.js";
import { internetChecksum, ip, parse } from "../../helpers/packet.js";
import { fixturePath, LINKTYPE_EN10MB, LINKTYPE_LINUX_SLL, readPcap } from "../../helpers/pcap.js";

const CLIENT = "10.99.1.2";
const ROUTER = "10.99.1.1";
const SERVER = "192.0.2.10";
/** Captured with checksum offload and TSO on the client's link: its packets are CHECKSUM_PARTIAL. */
const PARTIAL = new Set(["tcp-offload-partial.pcap", "udp-gso-partial.pcap"]);

const dir = dirname(fixturePath("capture.sh"));
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".pcap"))
  .sort();

function packets(name: string): Uint8Array[] {
  return readPcap(fixturePath(name)).records.map((r) => r.ip);
}

/** Prepend the virtio_net_hdr a TUN with IFF_VNET_HDR would give a CHECKSUM_PARTIAL packet. */
function withNeedsCsum(p: Uint8Array): Uint8Array {
  const out = new Uint8Array(vnet.LEN + p.length);
  const ihl = (p[0] & 0x0f) * 4;
  const field = p[9] === ipv4.PROTO_TCP ? tcp.CHECKSUM : udp.CHECKSUM;
  vnet.write(out, 0, vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, ihl, field);
  out.set(p, vnet.LEN);
  return out;
}

t.test("the fixture set is complete and every file holds IPv4 packets", async (t) => {
  for (const want of [
    "icmp-echo.pcap",
    "icmp-echo-record-route.pcap",
    "udp-echo.pcap",
    "udp-echo-sll.pcap",
    "tcp-echo.pcap",
    "udp-port-unreachable.pcap",
    "tcp-rst.pcap",
    "frag-needed-icmp.pcap",
    "frag-needed-udp.pcap",
    "time-exceeded-udp.pcap",
    "time-exceeded-tcp.pcap",
    "admin-prohibited-tcp.pcap",
    "tcp-offload-partial.pcap",
    "udp-gso-partial.pcap",
  ]) {
    t.ok(files.includes(want), `${want} is present`);
  }
  for (const f of files) t.ok(packets(f).length >= 2, `${f} has at least two IPv4 packets`);
  t.equal(readPcap(fixturePath("udp-echo.pcap")).linkType, LINKTYPE_EN10MB);
  t.equal(readPcap(fixturePath("udp-echo-sll.pcap")).linkType, LINKTYPE_LINUX_SLL);
});

t.test(
  "src/wire validates every kernel packet and reads the same fields as the test parser",
  async (t) => {
    let n = 0;
    for (const f of files) {
      for (const [i, p] of packets(f).entries()) {
        const at = `${f}#${i}`;
        const hl = ipv4.check(p, 0, p.length);
        if (hl < 0) {
          t.fail(`${at}: ipv4.check returned ${hl}`);
          continue;
        }
        const ref = parse(p);
        const tl = ipv4.totalLength(p, 0);
        t.equal(hl, ref.ihl, `${at}: header length`);
        t.equal(tl, ref.totalLength, `${at}: total length`);
        t.equal(ipv4.src(p, 0), ip(ref.src), `${at}: source`);
        t.equal(ipv4.dst(p, 0), ip(ref.dst), `${at}: destination`);
        t.equal(ipv4.ttl(p, 0), ref.ttl, `${at}: TTL`);
        t.equal(ipv4.dontFragment(p, 0), ref.df, `${at}: DF`);
        t.notOk(ipv4.isFragment(p, 0), `${at}: not a fragment`);
        const l4 = hl;
        const l4len = tl - hl;
        switch (ipv4.protocol(p, 0)) {
          case ipv4.PROTO_TCP: {
            const th = tcp.check(p, l4, l4len);
            t.ok(th >= tcp.MIN_HEADER_LEN, `${at}: tcp.check accepts (${th})`);
            t.equal(tcp.srcPort(p, l4), ref.sport, `${at}: TCP source port`);
            t.equal(tcp.dstPort(p, l4), ref.dport, `${at}: TCP destination port`);
            t.equal(tcp.flags(p, l4), ref.flags, `${at}: TCP flags`);
            t.equal(tcp.seq(p, l4), ref.seq, `${at}: TCP sequence number`);
            t.equal(l4len - th, ref.payload.length, `${at}: TCP payload length`);
            break;
          }
          case ipv4.PROTO_UDP: {
            // A UDP GSO super-packet from the sender's stack carries the whole length (3000 + 8).
            t.equal(udp.check(p, l4, l4len), l4len, `${at}: udp.check returns the UDP length`);
            t.equal(udp.srcPort(p, l4), ref.sport, `${at}: UDP source port`);
            t.equal(udp.dstPort(p, l4), ref.dport, `${at}: UDP destination port`);
            break;
          }
          case ipv4.PROTO_ICMP: {
            t.equal(icmp.check(p, l4, l4len), icmp.HEADER_LEN, `${at}: icmp.check accepts`);
            t.equal(icmp.type(p, l4), ref.icmpType, `${at}: ICMP type`);
            t.equal(icmp.code(p, l4), ref.icmpCode, `${at}: ICMP code`);
            if (icmp.isEcho(icmp.type(p, l4)))
              t.equal(icmp.id(p, l4), ref.icmpId, `${at}: echo id`);
            break;
          }
          default:
            t.fail(`${at}: unexpected protocol ${ipv4.protocol(p, 0)}`);
        }
        n++;
      }
    }
    t.ok(n >= 40, `${n} kernel packets were checked`);
  },
);

t.test("the checker and src/wire/checksum agree that every kernel checksum is valid", async (t) => {
  for (const f of files) {
    for (const [i, p] of packets(f).entries()) {
      const at = `${f}#${i}`;
      const partial = PARTIAL.has(f) && parse(p).src === CLIENT && p[9] !== ipv4.PROTO_ICMP;
      const r = partial ? checksumsOk(withNeedsCsum(p)) : checksumsOk(p, 0, { vnet: false });
      t.ok(r.ok, `${at}${partial ? " (CHECKSUM_PARTIAL)" : ""}: ${r.why ?? "checksums valid"}`);
      // src/wire: the header sums to 0xffff with its own checksum (RFC 1071 §1 verification).
      const hl = ipv4.headerLength(p, 0);
      t.equal(cs.checksum(p, 0, hl), 0, `${at}: wire checksum verifies the IP header`);
      const tl = ipv4.totalLength(p, 0);
      const proto = ipv4.protocol(p, 0);
      if (proto === ipv4.PROTO_ICMP) {
        t.equal(cs.checksum(p, hl, tl - hl), 0, `${at}: wire checksum verifies ICMP`);
      } else if (partial) {
        const field =
          proto === ipv4.PROTO_TCP ? tcp.checksumField(p, hl) : udp.checksumField(p, hl);
        t.equal(
          field,
          cs.pseudoHeaderSum(ipv4.src(p, 0), ipv4.dst(p, 0), proto, tl - hl),
          `${at}: the kernel's partial checksum is wire's pseudo-header sum over the full length`,
        );
      } else {
        const ps = cs.pseudoHeaderSum(ipv4.src(p, 0), ipv4.dst(p, 0), proto, tl - hl);
        t.equal(cs.checksum(p, hl, tl - hl, ps), 0, `${at}: wire checksum verifies the L4 sum`);
      }
    }
  }
});

t.test("the offload captures hold GSO super-packets larger than the MTU", async (t) => {
  const big = (f: string) => packets(f).filter((p) => parse(p).src === CLIENT && p.length > 1500);
  t.ok(big("tcp-offload-partial.pcap").length > 0, "a TCP segment above 1500 bytes");
  const u = big("udp-gso-partial.pcap");
  t.equal(u.length, 1, "one UDP super-packet");
  t.equal(udp.length(u[0], 20), 3008, "its UDP length field covers all segments");
});

/** The first packet in `f` matching `pred`, or a failed assertion. */
function find(f: string, pred: (p: Uint8Array) => boolean): Uint8Array {
  const p = packets(f).find(pred);
  if (!p) throw new Error(`${f}: no matching packet`);
  return p;
}
const isIcmpType = (type: number) => (p: Uint8Array) => p[9] === 1 && p[(p[0] & 15) * 4] === type;

t.test("a kernel ICMP port unreachable embeds the UDP datagram that caused it", async (t) => {
  const p = find("udp-port-unreachable.pcap", isIcmpType(icmp.DEST_UNREACH));
  expectPacket(t, p, {
    src: SERVER,
    dst: CLIENT,
    icmpType: icmp.DEST_UNREACH,
    icmpCode: icmp.CODE_PORT_UNREACH,
    embedded: { src: CLIENT, dst: SERVER, proto: "udp", sport: 40003, dport: 9 },
  });
  const e = 20 + icmp.HEADER_LEN;
  t.equal(ipv4.src(p, e), ip(CLIENT), "wire reads the embedded source");
  t.equal(udp.srcPort(p, e + ipv4.headerLength(p, e)), 40003, "wire reads the embedded port");
});

t.test("a kernel RST answers a SYN to a closed port", async (t) => {
  const [syn, rst] = packets("tcp-rst.pcap");
  expectPacket(t, syn, { src: CLIENT, dst: SERVER, sport: 40004, dport: 81, flags: tcp.SYN });
  expectPacket(t, rst, {
    src: SERVER,
    dst: CLIENT,
    sport: 81,
    dport: 40004,
    flags: tcp.RST | tcp.ACK,
    ack: (tcp.seq(syn, 20) + 1) >>> 0,
  });
});

t.test(
  "a kernel fragmentation-needed error carries the next-hop MTU and the echo request",
  async (t) => {
    const req = find("frag-needed-icmp.pcap", isIcmpType(icmp.ECHO_REQUEST));
    const err = find("frag-needed-icmp.pcap", isIcmpType(icmp.DEST_UNREACH));
    const got = expectPacket(t, err, {
      src: ROUTER,
      dst: CLIENT,
      icmpType: icmp.DEST_UNREACH,
      icmpCode: icmp.CODE_FRAG_NEEDED,
      embedded: {
        src: CLIENT,
        dst: SERVER,
        proto: "icmp",
        totalLength: 1428,
        icmpType: icmp.ECHO_REQUEST,
        icmpId: icmp.id(req, 20),
      },
    });
    t.equal(ipv4.readU16(err, 20 + icmp.NEXT_HOP_MTU), 1280, "next-hop MTU (RFC 1191 §4)");
    // RFC 1812 §4.3.2.3: the error is at most 576 bytes, so the embedded datagram is truncated.
    t.equal(err.length, 576);
    t.ok(
      got?.embedded && got.embedded.totalLength > err.length - 28,
      "the embedded datagram is cut",
    );
    const e = 20 + icmp.HEADER_LEN;
    t.equal(
      ipv4.check(err, e, err.length - e),
      ipv4.ERR_TOTAL_LEN,
      "ipv4.check rejects a cut datagram",
    );
    t.equal(icmp.id(err, e + 20), icmp.id(req, 20), "wire reads the embedded echo id");
  },
);

t.test("a kernel fragmentation-needed error for UDP embeds the ports", async (t) => {
  const err = find("frag-needed-udp.pcap", isIcmpType(icmp.DEST_UNREACH));
  expectPacket(t, err, {
    src: ROUTER,
    dst: CLIENT,
    icmpType: icmp.DEST_UNREACH,
    icmpCode: icmp.CODE_FRAG_NEEDED,
    icmpRest: 1280,
    embedded: { src: CLIENT, dst: "192.0.2.11", df: true, sport: 40005, dport: 9 },
  });
});

t.test("kernel time-exceeded errors embed the expiring UDP and TCP headers", async (t) => {
  const u = find("time-exceeded-udp.pcap", isIcmpType(icmp.TIME_EXCEEDED));
  expectPacket(t, u, {
    src: ROUTER,
    dst: CLIENT,
    icmpCode: 0,
    embedded: { src: CLIENT, dst: SERVER, ttl: 1, proto: "udp", sport: 40006, dport: 33434 },
  });
  const syn = find("time-exceeded-tcp.pcap", (p) => p[9] === ipv4.PROTO_TCP);
  const te = find("time-exceeded-tcp.pcap", isIcmpType(icmp.TIME_EXCEEDED));
  expectPacket(t, te, {
    src: ROUTER,
    dst: CLIENT,
    embedded: {
      proto: "tcp",
      sport: 40007,
      dport: 7,
      flags: tcp.SYN,
      seq: tcp.seq(syn, 20),
    },
  });
  const e = 20 + icmp.HEADER_LEN;
  t.equal(ipv4.check(te, e, te.length - e), 20, "a short embedded datagram is whole here");
  t.equal(tcp.check(te, e + 20, te.length - e - 20), tcp.headerLength(syn, 20));
});

t.test("a kernel admin-prohibited reject (nft) embeds the forwarded SYN", async (t) => {
  const err = find("admin-prohibited-tcp.pcap", isIcmpType(icmp.DEST_UNREACH));
  expectPacket(t, err, {
    src: ROUTER,
    icmpCode: icmp.CODE_ADMIN_PROHIBITED,
    embedded: { src: CLIENT, dst: SERVER, ttl: 63, sport: 40008, dport: 82, flags: tcp.SYN },
  });
});

t.test("kernel echo, UDP and TCP exchanges parse with the expected fields", async (t) => {
  const [req, rep] = packets("icmp-echo.pcap");
  expectPacket(t, req, { src: CLIENT, dst: SERVER, icmpType: icmp.ECHO_REQUEST });
  expectPacket(t, rep, {
    src: SERVER,
    dst: CLIENT,
    icmpType: icmp.ECHO_REPLY,
    icmpId: icmp.id(req, 20),
  });
  const rr = packets("icmp-echo-record-route.pcap");
  t.ok(ipv4.headerLength(rr[0], 0) > 20, "ping -R sends IP options");
  t.equal(ipv4.check(rr[0], 0, rr[0].length), ipv4.headerLength(rr[0], 0));
  t.equal(icmp.type(rr[1], ipv4.headerLength(rr[1], 0)), icmp.ECHO_REPLY, "the reply too");
  const [q, a] = packets("udp-echo.pcap");
  expectPacket(t, q, { src: CLIENT, sport: 40001, dport: 7, payload: "tunnat fixture" });
  expectPacket(t, a, { src: SERVER, sport: 7, dport: 40001, payload: "tunnat fixture" });
  const tcpPkts = packets("tcp-echo.pcap");
  const syn = tcpPkts[0];
  t.equal(tcp.flags(syn, 20), tcp.SYN);
  t.ok(tcp.headerLength(syn, 20) > 20, "the kernel's SYN has TCP options");
  const data = tcpPkts.filter((p) => parse(p).payload.length > 0).map((p) => parse(p));
  t.match(data, [
    { src: CLIENT, dport: 7, payload: new TextEncoder().encode("hello tunnat\n") },
    { src: SERVER, sport: 7, payload: new TextEncoder().encode("hello tunnat\n") },
  ]);
  t.ok(
    tcpPkts.some((p) => (tcp.flags(p, 20) & tcp.FIN) !== 0),
    "the connection closes with a FIN",
  );
});

t.test("rewriting addresses of kernel packets keeps the IP header checksum valid", async (t) => {
  for (const f of files) {
    for (const [i, orig] of packets(f).entries()) {
      const p = orig.slice();
      ipv4.rewriteSrc(p, 0, ip("192.0.2.200"));
      ipv4.rewriteDst(p, 0, ip("192.0.2.201"));
      ipv4.setTtl(p, 0, ipv4.ttl(p, 0) - 1);
      const hl = ipv4.headerLength(p, 0);
      // Verified with the helper's own RFC 1071 loop, not src/wire's.
      t.equal(internetChecksum(p, 0, hl), 0, `${f}#${i}: header still verifies`);
    }
  }
});
