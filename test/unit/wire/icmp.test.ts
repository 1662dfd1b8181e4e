// src/wire/icmp.ts: echo and error messages, and the type classification the translator uses.
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import * as icmp from "../../../src/wire/icmp.js";
import * as ipv4 from "../../../src/wire/ipv4.js";
import { checksumsOk } from "../../helpers/checker.js";
import { build, truncate } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

// scapy: IP()/ICMP(type=8, id=0x4242, seq=3)/b"abcdefgh", from the ICMP header on.
const ECHO = h("0800 2425 4242 0003 6162 6364 6566 6768");

t.test("an echo request parses field by field", async (t) => {
  t.equal(icmp.check(ECHO, 0, ECHO.length), icmp.HEADER_LEN);
  t.equal(icmp.type(ECHO, 0), icmp.ECHO_REQUEST);
  t.equal(icmp.code(ECHO, 0), 0);
  t.equal(icmp.id(ECHO, 0), 0x4242);
  t.equal(ipv4.readU16(ECHO, icmp.SEQ), 3);
  t.equal(icmp.checksumField(ECHO, 0), 0x2425);
  t.equal(cs.checksum(ECHO, 0, ECHO.length), 0, "the message verifies");
});

t.test("check rejects a message shorter than the 8-byte header", async (t) => {
  for (const n of [0, 1, 4, 7]) t.equal(icmp.check(ECHO, 0, n), icmp.ERR_TOO_SHORT, `${n} bytes`);
  t.equal(icmp.check(ECHO, 0, 8), icmp.HEADER_LEN, "exactly 8 bytes");
});

t.test(
  "echo and error types are told apart; redirect and source quench are not translated",
  async (t) => {
    t.ok(icmp.isEcho(icmp.ECHO_REQUEST));
    t.ok(icmp.isEcho(icmp.ECHO_REPLY));
    t.notOk(icmp.isEcho(icmp.DEST_UNREACH));
    for (const e of [icmp.DEST_UNREACH, icmp.TIME_EXCEEDED, icmp.PARAM_PROBLEM]) {
      t.ok(icmp.isError(e), `type ${e} is an error`);
      t.notOk(icmp.isEcho(e));
    }
    for (const n of [
      icmp.ECHO_REQUEST,
      icmp.ECHO_REPLY,
      icmp.REDIRECT,
      icmp.SOURCE_QUENCH,
      13,
      14,
    ]) {
      t.notOk(icmp.isError(n), `type ${n} is not a translated error`);
    }
  },
);

t.test("an echo id rewrite with an RFC 1624 delta keeps the ICMP checksum valid", async (t) => {
  for (const nid of [0, 1, 0x4242, 0xfffe, 0xffff]) {
    const p = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "icmp", icmpId: 0x1234 });
    const d = cs.delta16(icmp.id(p, 20), nid);
    icmp.setId(p, 20, nid);
    icmp.setChecksumField(p, 20, cs.adjust(icmp.checksumField(p, 20), d));
    t.equal(icmp.id(p, 20), nid);
    t.same(checksumsOk(p), { ok: true }, `id 0x${nid.toString(16)}`);
  }
});

t.test(
  "a fragmentation-needed error exposes the next-hop MTU and the embedded datagram",
  async (t) => {
    const inner = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp", sport: 7, dport: 9 });
    const p = build({
      src: "192.0.2.1",
      dst: "10.99.0.2",
      proto: "icmp",
      icmpType: icmp.DEST_UNREACH,
      icmpCode: icmp.CODE_FRAG_NEEDED,
      icmpRest: 1280,
      embedded: truncate(inner),
    });
    const o = 20;
    t.equal(icmp.type(p, o), icmp.DEST_UNREACH);
    t.equal(icmp.code(p, o), icmp.CODE_FRAG_NEEDED);
    t.equal(ipv4.readU16(p, o + icmp.NEXT_HOP_MTU), 1280);
    const e = o + icmp.HEADER_LEN;
    t.equal(ipv4.check(p, e, p.length - e), 20, "the embedded header validates");
    t.equal(ipv4.src(p, e), ipv4.src(inner, 0));
  },
);

t.test("a parameter problem's pointer is at byte 4", async (t) => {
  const p = build({
    src: "192.0.2.1",
    dst: "10.99.0.2",
    proto: "icmp",
    icmpType: icmp.PARAM_PROBLEM,
    icmpRest: 0x0c000000, // pointer 12: the source address
    embedded: truncate(build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp" })),
  });
  t.equal(p[20 + icmp.POINTER], 12);
});
