// src/wire/checksum.ts against RFC 1071 examples, the test helper's independent loop, and RFC 1624
// incremental updates compared with full recomputation on seeded random cases.
import t from "tap";
import * as cs from "../../../src/wire/checksum.js";
import { build, internetChecksum, ip, onesSum, pseudoSum, seeded } from "../../helpers/packet.js";

const h = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));

t.test("the RFC 1071 §3 numerical example sums to 0xddf2", async (t) => {
  const b = h("0001 f203 f4f5 f6f7");
  t.equal(cs.sum(b, 0, b.length), 0xddf2);
  t.equal(cs.checksum(b, 0, b.length), 0x220d);
  t.equal(cs.fold(0x2ddf0), 0xddf2, "fold adds the carry back");
});

t.test("a textbook IPv4 header gets checksum 0xb861 and then verifies to zero", async (t) => {
  const hdr = h("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
  t.equal(cs.checksum(hdr, 0, 20), 0xb861);
  hdr[10] = 0xb8;
  hdr[11] = 0x61;
  t.equal(cs.checksum(hdr, 0, 20), 0, "a header that includes its checksum sums to all ones");
});

t.test("an odd length pads the last byte with zero on the right (RFC 1071 §4.1)", async (t) => {
  t.equal(cs.sum(Uint8Array.of(0x01), 0, 1), 0x0100);
  t.equal(cs.sum(h("abcdef"), 0, 3), 0x9ace);
  const b = h("ff 00 01 02 03 04 05");
  t.equal(cs.sum(b, 1, 5), onesSum(b, 1, 6), "at an odd offset too");
  t.equal(cs.sum(b, 0, 0), 0, "an empty range sums to zero");
  t.equal(cs.sum(b, 3, 0, 0x1234), 0x1234, "and keeps the initial value");
});

t.test(
  "random buffers up to 64 KiB sum as the helper's loop does, at any offset and length",
  async (t) => {
    const rnd = seeded(1071);
    for (let c = 0; c < 300; c++) {
      const len = c < 10 ? 65536 - c : rnd() % 2000;
      const off = rnd() % 7;
      const b = new Uint8Array(off + len + 3);
      for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
      const init = rnd() % 0x20000;
      const want = onesSum(b, off, off + len, init);
      if (cs.sum(b, off, len, init) !== want)
        t.fail(`case ${c}: len ${len} off ${off} init ${init}`);
      if (cs.checksum(b, off, len, init) !== 0xffff - want) t.fail(`case ${c}: checksum`);
    }
    t.pass("300 cases agree");
  },
);

t.test("buffers of all ones stay exact past the 32-bit range (64 KiB and 256 KiB)", async (t) => {
  for (const n of [65536, 65535, 262144]) {
    const b = new Uint8Array(n).fill(0xff);
    // Words of 0xffff are ones'-complement zero; an odd tail byte adds 0xff00.
    t.equal(cs.sum(b, 0, n), n % 2 ? 0xff00 : 0xffff, `${n} bytes`);
    t.equal(cs.checksum(b, 0, n), 0xffff - onesSum(b));
  }
  t.equal(cs.fold(0xffffffff), 0xffff, "fold of 2^32-1");
  t.equal(cs.fold(2 ** 40 - 1), 0xff, "fold of 2^40-1 is exact (2^16 ≡ 1, so 2^40-1 ≡ 0xff)");
  t.equal(cs.fold(2 ** 48 - 1), 0xffff, "fold of 2^48-1");
  t.equal(cs.fold(0), 0);
  t.equal(cs.finish(0x1ffff), 0xfffe);
});

t.test("pseudoHeaderSum equals the helper's pseudo-header sum", async (t) => {
  const rnd = seeded(793);
  for (let c = 0; c < 2000; c++) {
    const s = rnd();
    const d = rnd();
    const p = c % 2 ? 6 : 17;
    const l = rnd() % 65536;
    if (cs.pseudoHeaderSum(s, d, p, l) !== pseudoSum(s, d, p, l)) t.fail(`case ${c}`);
  }
  t.equal(cs.pseudoHeaderSum(ip("10.0.0.1"), ip("10.0.0.2"), 6, 20), 0x1403 + 0x1a);
});

/** A random 60-byte "header" with a correct checksum at bytes 10..11. */
function randomBlock(rnd: () => number, edge: number): Uint8Array {
  const b = new Uint8Array(60);
  for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
  if (edge === 1) b.fill(0xff, 12); // sums that sit on the 0xffff boundary
  if (edge === 2) b.fill(0, 12);
  b[10] = 0;
  b[11] = 0;
  const c = internetChecksum(b);
  b[10] = c >>> 8;
  b[11] = c & 0xff;
  return b;
}

t.test(
  "incremental updates (RFC 1624 eqn. 3) equal full recomputation for random changes",
  async (t) => {
    const rnd = seeded(1624);
    let zeros = 0;
    for (let c = 0; c < 5000; c++) {
      const b = randomBlock(rnd, c % 5);
      const old = b[10] * 256 + b[11];
      const at = 12 + 2 * (rnd() % 24);
      let d: number;
      if (c % 3 === 0 && at <= 56) {
        const ov = ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
        const nv = [0, 0xffffffff, rnd()][c % 9 === 0 ? 0 : c % 7 === 0 ? 1 : 2];
        d = cs.delta32(ov, nv);
        b[at] = nv >>> 24;
        b[at + 1] = (nv >>> 16) & 0xff;
        b[at + 2] = (nv >>> 8) & 0xff;
        b[at + 3] = nv & 0xff;
      } else {
        const ov = b[at] * 256 + b[at + 1];
        // Mostly random, sometimes 0x0000/0xffff, sometimes the value that makes the checksum 0.
        let nv = [0, 0xffff, rnd() & 0xffff][c % 11 === 0 ? 0 : c % 13 === 0 ? 1 : 2];
        if (c % 4 === 1) {
          b[at] = 0;
          b[at + 1] = 0;
          b[10] = 0;
          b[11] = 0;
          nv = 0xffff - onesSum(b); // the whole block then sums to 0xffff: checksum 0x0000
          b[at] = ov >>> 8;
          b[at + 1] = ov & 0xff;
          b[10] = old >>> 8;
          b[11] = old & 0xff;
        }
        d = cs.delta16(ov, nv);
        b[at] = nv >>> 8;
        b[at + 1] = nv & 0xff;
      }
      const inc = cs.adjust(old, d);
      b[10] = 0;
      b[11] = 0;
      const full = internetChecksum(b);
      if (full === 0) zeros++;
      if (inc !== full) {
        t.fail(`case ${c}: incremental 0x${inc.toString(16)} != full 0x${full.toString(16)}`);
        break;
      }
    }
    t.ok(zeros > 100, `${zeros} cases produced a checksum of 0x0000, never 0xffff`);
  },
);

t.test("a delta and its negation cancel, and deltas of unchanged fields do nothing", async (t) => {
  const rnd = seeded(7);
  for (let c = 0; c < 2000; c++) {
    const csum = rnd() % 0xffff; // 0..0xfffe: the values a full computation produces
    const d = cs.delta32(rnd(), rnd());
    if (cs.adjust(cs.adjust(csum, d), cs.negate(d)) !== csum) t.fail(`case ${c}`);
    const v = rnd() & 0xffff;
    if (cs.adjust(csum, cs.delta16(v, v)) !== csum) t.fail(`case ${c}: no-op 16`);
  }
  t.pass("2000 cases");
});

t.test("adjustPartial moves a CHECKSUM_PARTIAL field to the new pseudo-header sum", async (t) => {
  const rnd = seeded(1625);
  for (let c = 0; c < 3000; c++) {
    const s = rnd();
    const d = rnd();
    const ns = c % 2 ? rnd() : s;
    const nd = c % 3 ? rnd() : d;
    const proto = c % 2 ? 6 : 17;
    const len = 8 + (rnd() % 65000);
    const field = pseudoSum(s, d, proto, len);
    const got = cs.adjustPartial(field, cs.delta32(s, ns) + cs.delta32(d, nd));
    if (got !== pseudoSum(ns, nd, proto, len)) {
      t.fail(`case ${c}: 0x${got.toString(16)} != 0x${pseudoSum(ns, nd, proto, len).toString(16)}`);
      break;
    }
  }
  t.pass("3000 cases");
});

t.test(
  "a partial checksum moved by adjustPartial completes to the rewritten packet's checksum",
  async (t) => {
    const spec = {
      src: "10.99.0.2",
      dst: "192.0.2.10",
      sport: 40000,
      dport: 443,
      flags: 0x18,
      payload: new Uint8Array(5000).map((_, i) => i * 7),
    };
    const pkt = build({ ...spec, partialChecksum: true });
    const field = pkt[36] * 256 + pkt[37];
    const d = cs.delta32(ip(spec.src), ip("192.0.2.99"));
    const moved = cs.adjustPartial(field, d);
    // The translator also rewrites the port; with CHECKSUM_PARTIAL that is not applied to the field,
    // because the device sums the TCP header itself when it completes the checksum.
    const after = build({ ...spec, src: "192.0.2.99", sport: 1024, partialChecksum: true });
    t.equal(
      moved,
      after[36] * 256 + after[37],
      "equals the pseudo-header sum of the new addresses",
    );
    after[36] = moved >>> 8;
    after[37] = moved & 0xff;
    const full = build({ ...spec, src: "192.0.2.99", sport: 1024 });
    t.equal(internetChecksum(after, 20), full[36] * 256 + full[37], "and completes correctly");
  },
);
