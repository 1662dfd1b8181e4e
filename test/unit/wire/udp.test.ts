// src/wire/udp.ts: byte fixtures and the length field's consistency with the IP payload.
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import * as udp from "../../../src/wire/udp.js";
import { checksumsOk } from "../../helpers/checker.js";
import { build, seeded } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

// The UDP part of scapy's IP()/UDP(sport=5353, dport=53)/b"query!"
const DGRAM = h("14e9 0035 000e ce3b 7175 6572 7921");

t.test("a datagram parses field by field", async (t) => {
  t.equal(udp.check(DGRAM, 0, DGRAM.length), 14, "check returns the UDP length");
  t.equal(udp.srcPort(DGRAM, 0), 5353);
  t.equal(udp.dstPort(DGRAM, 0), 53);
  t.equal(udp.length(DGRAM, 0), 14);
  t.equal(udp.checksumField(DGRAM, 0), 0xce3b);
});

t.test("check rejects a short datagram and a length field that is impossible", async (t) => {
  t.equal(udp.check(DGRAM, 0, 7), udp.ERR_TOO_SHORT, "7 bytes");
  const withLen = (v: number) => {
    const b = DGRAM.slice();
    b[udp.LENGTH] = v >>> 8;
    b[udp.LENGTH + 1] = v & 0xff;
    return b;
  };
  t.equal(udp.check(withLen(15), 0, 14), udp.ERR_LENGTH, "one byte more than the IP payload");
  t.equal(udp.check(withLen(0xffff), 0, 14), udp.ERR_LENGTH, "65535");
  t.equal(udp.check(withLen(7), 0, 14), udp.ERR_LENGTH, "below the 8-byte header");
  t.equal(udp.check(withLen(0), 0, 14), udp.ERR_LENGTH, "zero");
  t.equal(udp.check(withLen(8), 0, 14), 8, "shorter than the payload: trailing bytes allowed");
  t.equal(udp.check(DGRAM, 0, 13), udp.ERR_LENGTH, "an IP payload shorter than the UDP length");
});

t.test("a GSO super-packet skips the length test", async (t) => {
  const b = DGRAM.slice();
  b[udp.LENGTH] = 0x0b; // 3008, as a UDP_L4 super-packet from the sender's stack carries
  b[udp.LENGTH + 1] = 0xc0;
  t.equal(udp.check(b, 0, b.length), udp.ERR_LENGTH, "rejected without gso");
  t.equal(udp.check(b, 0, b.length, true), 3008, "returned as is with gso");
  t.equal(udp.check(b, 0, 7, true), udp.ERR_TOO_SHORT, "still needs 8 bytes");
});

t.test("setters write big-endian ports and a port rewrite keeps the checksum valid", async (t) => {
  const b = DGRAM.slice();
  udp.setSrcPort(b, 0, 0xabcd);
  udp.setDstPort(b, 0, 0x0102);
  udp.setChecksumField(b, 0, 0);
  t.equal(Buffer.from(b.subarray(0, 8)).toString("hex"), "abcd0102000e0000");
  const rnd = seeded(768);
  for (let c = 0; c < 1000; c++) {
    const p = build({
      src: "10.99.0.2",
      dst: "192.0.2.10",
      proto: "udp",
      sport: rnd() & 0xffff,
      dport: rnd() & 0xffff,
      payload: new Uint8Array(rnd() % 64).map(() => rnd() & 0xff),
    });
    const np = rnd() & 0xffff;
    const d = cs.delta16(udp.dstPort(p, 20), np);
    udp.setDstPort(p, 20, np);
    let f = cs.adjust(udp.checksumField(p, 20), d);
    if (f === 0) f = 0xffff; // RFC 768: a computed 0 is sent as all ones (the translator's job)
    udp.setChecksumField(p, 20, f);
    const r = checksumsOk(p, 0, { allowUdpZero: false });
    if (!r.ok) {
      t.fail(`case ${c}: ${r.why}`);
      break;
    }
  }
  t.pass("1000 cases");
});
