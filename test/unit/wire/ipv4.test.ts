// src/wire/ipv4.ts: byte fixtures, impossible lengths, and header rewrites that must keep the
// checksum valid (checked by the helper's independent full recomputation).
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import * as ipv4 from "../../../src/wire/ipv4.js";
import { checksumsOk } from "../../helpers/checker.js";
import { build, internetChecksum, ip, ipStr, parse, seeded } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

// scapy: IP(src="10.99.0.2", dst="192.0.2.10", id=9, options=[IPOption_RR(routers=["0.0.0.0"])])
//        / UDP(sport=1, dport=2) / b"x"   (IHL 7: a 7-byte record-route option and one EOL byte)
const WITH_OPTIONS = h(
  "4700 0025 0009 0000 4011 a149 0a63 0002 c000 020a 0707 0400 0000 0000 0001 0002 0009 bb69 78",
);

t.test("a header with options parses field by field", async (t) => {
  const b = WITH_OPTIONS;
  t.equal(ipv4.check(b, 0, b.length), 28, "check returns the header length");
  t.equal(ipv4.headerLength(b, 0), 28);
  t.equal(ipv4.totalLength(b, 0), 37);
  t.equal(ipv4.id(b, 0), 9);
  t.equal(ipv4.ttl(b, 0), 64);
  t.equal(ipv4.protocol(b, 0), ipv4.PROTO_UDP);
  t.equal(ipv4.checksumField(b, 0), 0xa149);
  t.equal(ipStr(ipv4.src(b, 0)), "10.99.0.2");
  t.equal(ipStr(ipv4.dst(b, 0)), "192.0.2.10");
  t.notOk(ipv4.dontFragment(b, 0));
  t.notOk(ipv4.isFragment(b, 0));
});

t.test("a packet at an offset inside a larger buffer is read there", async (t) => {
  const big = new Uint8Array(100).fill(0xee);
  big.set(WITH_OPTIONS, 13);
  t.equal(ipv4.check(big, 13, WITH_OPTIONS.length), 28);
  t.equal(ipStr(ipv4.dst(big, 13)), "192.0.2.10");
  t.equal(
    ipv4.check(big, 13, WITH_OPTIONS.length - 1),
    ipv4.ERR_TOTAL_LEN,
    "len bounds the packet",
  );
});

t.test("check rejects impossible lengths and versions with the matching sentinel", async (t) => {
  const ok = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp", payload: "abcd" });
  const mut = (f: (b: Uint8Array) => void) => {
    const b = ok.slice();
    f(b);
    return b;
  };
  t.equal(ipv4.check(ok, 0, ok.length), 20, "the unmodified packet passes");
  t.equal(ipv4.check(ok, 0, 19), ipv4.ERR_TOO_SHORT, "19 bytes are too short");
  t.equal(ipv4.check(ok, 0, 0), ipv4.ERR_TOO_SHORT, "0 bytes are too short");
  t.equal(
    ipv4.check(
      mut((b) => (b[0] = 0x65)),
      0,
      ok.length,
    ),
    ipv4.ERR_VERSION,
    "version 6",
  );
  t.equal(
    ipv4.check(
      mut((b) => (b[0] = 0x05)),
      0,
      ok.length,
    ),
    ipv4.ERR_VERSION,
    "version 0",
  );
  for (const ihl of [0, 1, 4]) {
    t.equal(
      ipv4.check(
        mut((b) => (b[0] = 0x40 | ihl)),
        0,
        ok.length,
      ),
      ipv4.ERR_IHL,
      `IHL ${ihl}`,
    );
  }
  // IHL 15 means a 60-byte header; the packet has 32 bytes.
  t.equal(
    ipv4.check(
      mut((b) => (b[0] = 0x4f)),
      0,
      ok.length,
    ),
    ipv4.ERR_IHL,
    "IHL beyond buffer",
  );
  const tl = (v: number) => mut((b) => ipv4.setTotalLength(b, 0, v));
  t.equal(ipv4.check(tl(ok.length + 1), 0, ok.length), ipv4.ERR_TOTAL_LEN, "total beyond buffer");
  t.equal(ipv4.check(tl(0xffff), 0, ok.length), ipv4.ERR_TOTAL_LEN, "total 65535");
  t.equal(ipv4.check(tl(19), 0, ok.length), ipv4.ERR_TOTAL_LEN, "total below IHL");
  t.equal(ipv4.check(tl(0), 0, ok.length), ipv4.ERR_TOTAL_LEN, "total 0");
  t.equal(ipv4.check(tl(20), 0, ok.length), 20, "a bare header with trailing bytes is allowed");
  // Options make the header 28 bytes; a total length of 24 is inside the header.
  const opt = WITH_OPTIONS.slice();
  ipv4.setTotalLength(opt, 0, 24);
  t.equal(ipv4.check(opt, 0, opt.length), ipv4.ERR_TOTAL_LEN, "total inside the options");
  t.equal(ipv4.check(WITH_OPTIONS, 0, 27), ipv4.ERR_IHL, "options cut by the buffer");
});

t.test("the 60-byte maximum header with 40 bytes of options is accepted", async (t) => {
  const opts = new Uint8Array(40).fill(1); // NOPs
  const p = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp", ipOptions: opts, sport: 5 });
  t.equal(ipv4.check(p, 0, p.length), ipv4.MAX_HEADER_LEN);
  t.equal(parse(p).sport, 5);
});

t.test("fragment flags and offsets are decoded (offset in bytes)", async (t) => {
  const base = { src: "10.99.0.2", dst: "192.0.2.10", proto: "udp" as const, payload: "12345678" };
  const df = build({ ...base, df: true });
  t.ok(ipv4.dontFragment(df, 0));
  t.notOk(ipv4.isFragment(df, 0), "DF alone is not a fragment");
  const first = build({ ...base, mf: true });
  t.ok(ipv4.moreFragments(first, 0));
  t.ok(ipv4.isFragment(first, 0), "the first fragment (MF, offset 0)");
  t.equal(ipv4.fragOffset(first, 0), 0);
  const last = build({ ...base, fragOffset: 1480 });
  t.ok(ipv4.isFragment(last, 0), "the last fragment (offset, no MF)");
  t.notOk(ipv4.moreFragments(last, 0));
  t.equal(ipv4.fragOffset(last, 0), 1480);
  const max = build({ ...base, fragOffset: 0x1fff * 8, mf: true, df: true });
  t.equal(ipv4.fragOffset(max, 0), 65528);
  t.equal(ipv4.flagsFrag(max, 0), 0x7fff);
});

t.test("32-bit and 16-bit accessors are unsigned and big-endian", async (t) => {
  const b = new Uint8Array(8);
  ipv4.writeU32(b, 1, 0xfedcba98);
  t.same([...b], [0, 0xfe, 0xdc, 0xba, 0x98, 0, 0, 0]);
  t.equal(ipv4.readU32(b, 1), 0xfedcba98, "no sign bit leaks through");
  ipv4.writeU16(b, 5, 0xabcd);
  t.equal(ipv4.readU16(b, 5), 0xabcd);
  t.equal(b[5], 0xab);
});

t.test("rewriteSrc, rewriteDst and setTtl keep the header checksum valid", async (t) => {
  const rnd = seeded(791);
  let n = 0;
  for (let c = 0; c < 2000; c++) {
    const nopts = rnd() % 11;
    const p = build({
      src: ipStr(rnd()),
      dst: ipStr(rnd()),
      proto: "udp",
      ttl: rnd() & 0xff,
      ipId: rnd() & 0xffff,
      df: (c & 1) === 1,
      ipOptions: new Uint8Array(nopts * 4).map(() => rnd() & 0xff),
      payload: "x",
    });
    const hl = 20 + nopts * 4;
    const ns = [0, 0xffffffff, rnd()][c % 3];
    const nd = rnd();
    const nt = [0, 255, rnd() & 0xff][c % 3];
    ipv4.rewriteSrc(p, 0, ns);
    ipv4.rewriteDst(p, 0, nd);
    ipv4.setTtl(p, 0, nt);
    if (ipv4.src(p, 0) !== ns || ipv4.dst(p, 0) !== nd || ipv4.ttl(p, 0) !== nt) {
      t.fail(`case ${c}: fields not written`);
    }
    const want = internetChecksum(
      p.map((b, i) => (i === 10 || i === 11 ? 0 : b)),
      0,
      hl,
    );
    if (ipv4.checksumField(p, 0) !== want) {
      t.fail(`case ${c}: 0x${ipv4.checksumField(p, 0).toString(16)} != 0x${want.toString(16)}`);
      break;
    }
    if (ipv4.protocol(p, 0) !== ipv4.PROTO_UDP) t.fail(`case ${c}: setTtl changed the protocol`);
    n++;
  }
  t.equal(n, 2000, "2000 random headers (with options) rewritten");
});

t.test("the delta rewriteSrc returns fixes the TCP checksum's pseudo-header too", async (t) => {
  const p = build({ src: "10.99.0.2", dst: "192.0.2.10", sport: 1, dport: 2, payload: "data" });
  const d = ipv4.rewriteSrc(p, 0, ip("192.0.2.77"));
  const field = p[36] * 256 + p[37];
  const fixed = cs.adjust(field, d);
  p[36] = fixed >>> 8;
  p[37] = fixed & 0xff;
  t.same(checksumsOk(p), { ok: true });
  const d2 = ipv4.rewriteDst(p, 0, ip("192.0.2.78"));
  const f2 = cs.adjust(p[36] * 256 + p[37], d2);
  p[36] = f2 >>> 8;
  p[37] = f2 & 0xff;
  t.same(checksumsOk(p), { ok: true });
});

t.test("a wrong header checksum stays wrong by the same amount after a rewrite", async (t) => {
  const p = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp", badIpChecksum: true });
  const good = build({ src: "10.99.0.2", dst: "192.0.2.10", proto: "udp" });
  // The error as a ones'-complement difference between the carried and the correct checksum.
  const err = (bad: number, ok: number) => cs.fold(bad + (ok ^ 0xffff));
  const before = err(ipv4.checksumField(p, 0), ipv4.checksumField(good, 0));
  ipv4.rewriteSrc(p, 0, ip("192.0.2.5"));
  t.equal(checksumsOk(p).ok, false, "a bad checksum is carried, never repaired");
  const correct = build({ src: "192.0.2.5", dst: "192.0.2.10", proto: "udp" });
  t.equal(err(ipv4.checksumField(p, 0), ipv4.checksumField(correct, 0)), before);
});

t.test("writeHeader produces the same 20 bytes as the helper's builder", async (t) => {
  const rnd = seeded(20);
  for (let c = 0; c < 500; c++) {
    const spec = {
      src: ipStr(rnd()),
      dst: ipStr(rnd()),
      proto: [1, 6, 17, 47][c % 4],
      ipId: rnd() & 0xffff,
      df: (c & 1) === 1,
      ttl: rnd() & 0xff,
      payload: new Uint8Array(rnd() % 100),
    };
    const want = build(spec);
    const got = new Uint8Array(want.length);
    const { proto, ipId, df, ttl, src, dst } = spec;
    ipv4.writeHeader(got, 0, want.length, ipId, df, ttl, proto, ip(src), ip(dst));
    if (Buffer.compare(got.subarray(0, 20), want.subarray(0, 20)) !== 0) {
      t.fail(`case ${c}: ${Buffer.from(got.subarray(0, 20)).toString("hex")}`);
      break;
    }
  }
  t.pass("500 headers agree");
});
