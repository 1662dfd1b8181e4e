import t from "tap";
import {
  cidrContains,
  cidrOverlaps,
  formatCidr,
  formatIpv4,
  parseCidr,
  parseIpv4,
  prefixMask,
} from "../../../src/wire/addr.js";

t.test("dotted quads parse to host-order uint32 and format back", async (t) => {
  t.equal(parseIpv4("0.0.0.0"), 0);
  t.equal(parseIpv4("255.255.255.255"), 0xffffffff);
  t.equal(parseIpv4("10.0.1.2"), 0x0a000102);
  t.equal(parseIpv4("203.0.113.1"), 0xcb007101);
  t.equal(formatIpv4(0xcb007101), "203.0.113.1");
  t.equal(formatIpv4(0xffffffff), "255.255.255.255");
  for (const s of ["192.168.7.200", "1.2.3.4", "0.0.0.1"]) t.equal(formatIpv4(parseIpv4(s)), s);
});

t.test("malformed addresses are refused with -1", async (t) => {
  for (const s of [
    "",
    "1.2.3",
    "1.2.3.4.5",
    "256.0.0.1",
    "1.2.3.-4",
    "01.2.3.4",
    "1..2.3",
    "a.b.c.d",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.",
    "1.2.3.4/24",
  ])
    t.equal(parseIpv4(s), -1, JSON.stringify(s));
});

t.test("prefixes parse, mask and report host bits", async (t) => {
  t.same(parseCidr("10.0.0.0/16"), { addr: 0x0a000000, len: 16, hostBits: false });
  t.same(parseCidr("10.0.1.5/24"), { addr: 0x0a000100, len: 24, hostBits: true });
  t.same(parseCidr("1.2.3.4"), { addr: 0x01020304, len: 32, hostBits: false });
  t.same(parseCidr("0.0.0.0/0"), { addr: 0, len: 0, hostBits: false });
  for (const s of ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0/8", "10.0.0.0/08x"])
    t.equal(parseCidr(s), null, s);
  t.equal(formatCidr({ addr: 0x0a000000, len: 8 }), "10.0.0.0/8");
  t.equal(prefixMask(0), 0);
  t.equal(prefixMask(32), 0xffffffff);
  t.equal(prefixMask(20), 0xfffff000);
});

t.test("containment and overlap follow the mask", async (t) => {
  const p = { addr: 0x0a000100, len: 24 };
  t.ok(cidrContains(p, parseIpv4("10.0.1.255")));
  t.notOk(cidrContains(p, parseIpv4("10.0.2.0")));
  t.ok(cidrContains({ addr: 0, len: 0 }, parseIpv4("8.8.8.8")));
  t.ok(cidrOverlaps(p, { addr: 0x0a000000, len: 16 }));
  t.notOk(cidrOverlaps(p, { addr: 0x0a000200, len: 24 }));
});
