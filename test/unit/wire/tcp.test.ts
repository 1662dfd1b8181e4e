// src/wire/tcp.ts: byte fixtures, impossible data offsets, and port/sequence accessors.
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import * as tcp from "../../../src/wire/tcp.js";
import { checksumsOk } from "../../helpers/checker.js";
import { build, parse, seeded } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

// The TCP part of scapy's IP()/TCP(sport=40000, dport=80, flags="S", seq=1000, window=65535)/"hello"
const SYN = h("9c40 0050 0000 03e8 0000 0000 5002 ffff ff23 0000 6865 6c6c 6f");
// A kernel SYN's header: data offset 10 (40 bytes) with MSS, SACK-permitted, timestamps, wscale.
const SYN_OPTIONS = h(
  "9c47 0007 d912 f0ed 0000 0000 a002 fbe0 c9c4 0000 0204 04d8 0402 080a d693 b5e2 0000 0000 0103 030a",
);

t.test("a SYN parses field by field", async (t) => {
  t.equal(tcp.check(SYN, 0, SYN.length), 20);
  t.equal(tcp.srcPort(SYN, 0), 40000);
  t.equal(tcp.dstPort(SYN, 0), 80);
  t.equal(tcp.seq(SYN, 0), 1000);
  t.equal(tcp.ack(SYN, 0), 0);
  t.equal(tcp.flags(SYN, 0), tcp.SYN);
  t.equal(tcp.headerLength(SYN, 0), 20);
  t.equal(tcp.checksumField(SYN, 0), 0xff23);
});

t.test("a header with options reports its full length", async (t) => {
  t.equal(tcp.check(SYN_OPTIONS, 0, SYN_OPTIONS.length), 40);
  t.equal(tcp.srcPort(SYN_OPTIONS, 0), 40007);
  t.equal(tcp.dstPort(SYN_OPTIONS, 0), 7);
});

t.test("check rejects a short segment and data offsets below 5 or past the segment", async (t) => {
  t.equal(tcp.check(SYN, 0, 19), tcp.ERR_TOO_SHORT, "19 bytes");
  t.equal(tcp.check(SYN, 0, 0), tcp.ERR_TOO_SHORT, "0 bytes");
  for (const doff of [0, 1, 4]) {
    const b = SYN.slice();
    b[tcp.DATA_OFF] = doff << 4;
    t.equal(tcp.check(b, 0, b.length), tcp.ERR_DATA_OFF, `data offset ${doff}`);
  }
  const b = SYN.slice();
  b[tcp.DATA_OFF] = 0xf0; // 60 bytes of header in a 25-byte segment
  t.equal(tcp.check(b, 0, b.length), tcp.ERR_DATA_OFF, "data offset 15 beyond the segment");
  t.equal(tcp.check(SYN_OPTIONS, 0, 39), tcp.ERR_DATA_OFF, "options cut by the segment");
  t.equal(tcp.check(SYN_OPTIONS, 0, 40), 40, "a header exactly filling the segment");
  const reserved = SYN.slice();
  reserved[tcp.DATA_OFF] = 0x5f; // reserved bits and the AE/NS bit do not change the length
  t.equal(tcp.check(reserved, 0, reserved.length), 20);
});

t.test("setters write big-endian ports, sequence and acknowledgment numbers", async (t) => {
  const b = SYN.slice();
  tcp.setSrcPort(b, 0, 0xfffe);
  tcp.setDstPort(b, 0, 1);
  tcp.setSeq(b, 0, 0xffffffff);
  tcp.setAck(b, 0, 0x80000001);
  tcp.setChecksumField(b, 0, 0xbeef);
  t.equal(Buffer.from(b.subarray(0, 18)).toString("hex"), "fffe0001ffffffff800000015002ffffbeef");
  t.equal(tcp.seq(b, 0), 0xffffffff, "unsigned");
  t.equal(tcp.ack(b, 0), 0x80000001, "unsigned");
});

t.test("flag constants are distinct bits, and ACK is the flag, not the field offset", async (t) => {
  const flags = [tcp.FIN, tcp.SYN, tcp.RST, tcp.PSH, tcp.ACK, tcp.URG];
  t.same(flags, [1, 2, 4, 8, 16, 32]);
  const p = parse(build({ src: "10.0.0.1", dst: "10.0.0.2", flags: tcp.SYN | tcp.ACK }));
  t.equal(p.flags, 0x12, "SYN|ACK built from the constants is 0x12");
});

t.test("a port rewrite with an RFC 1624 delta keeps the TCP checksum valid", async (t) => {
  const rnd = seeded(9293);
  for (let c = 0; c < 1000; c++) {
    const p = build({
      src: "10.99.0.2",
      dst: "192.0.2.10",
      sport: rnd() & 0xffff,
      dport: rnd() & 0xffff,
      seq: rnd(),
      flags: tcp.ACK | tcp.PSH,
      payload: new Uint8Array(rnd() % 64).map(() => rnd() & 0xff),
    });
    const np = [0, 0xffff, rnd() & 0xffff][c % 3];
    const d = cs.delta16(tcp.srcPort(p, 20), np);
    tcp.setSrcPort(p, 20, np);
    tcp.setChecksumField(p, 20, cs.adjust(tcp.checksumField(p, 20), d));
    const r = checksumsOk(p);
    if (!r.ok) {
      t.fail(`case ${c}: ${r.why}`);
      break;
    }
  }
  t.pass("1000 cases");
});
