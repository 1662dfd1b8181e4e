import t from "tap";
import { EgressAnswer, EgressPolicy, type EgressRule } from "../../../src/nat/egress.js";
import { seeded } from "../../helpers/packet.js";

function mask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** The rules' meaning, read straight off the list: the first rule that matches, or -1. */
function matchLinear(rules: EgressRule[], proto: number, src: number, dst: number, dport: number) {
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i] as EgressRule;
    if (r.proto !== 0 && r.proto !== proto) continue;
    if (r.portLo > 0 || r.portHi < 65535) {
      if (proto !== 6 && proto !== 17) continue;
      if (dport < r.portLo || dport > r.portHi) continue;
    }
    if ((dst & mask(r.dst.len)) >>> 0 !== r.dst.addr) continue;
    if (r.src && (src & mask(r.src.len)) >>> 0 !== r.src.addr) continue;
    return i;
  }
  return -1;
}

function rule(over: Partial<EgressRule>): EgressRule {
  return {
    allow: false,
    dst: { addr: 0, len: 0 },
    src: null,
    proto: 0,
    portLo: 0,
    portHi: 65535,
    answer: EgressAnswer.Icmp,
    text: "",
    ...over,
  };
}

/** Random rules clustered on a few address blocks, so that prefixes nest and overlap. */
function randomRules(rnd: () => number, n: number): EgressRule[] {
  const bases = Array.from({ length: 8 }, () => (rnd() * 0x100000000) >>> 0);
  const out: EgressRule[] = [];
  for (let i = 0; i < n; i++) {
    const len = Math.floor(rnd() * 33);
    const base = bases[Math.floor(rnd() * bases.length)] as number;
    const noise = (rnd() * 0x100000000) >>> 0;
    const a = ((base & 0xfff00000) | (noise & 0x000fffff)) >>> 0;
    const proto = [0, 1, 6, 17][Math.floor(rnd() * 4)] as number;
    const ported = proto !== 1 && rnd() < 0.5;
    const lo = ported ? Math.floor(rnd() * 65536) : 0;
    const hi = ported ? Math.min(65535, lo + Math.floor(rnd() * 2000)) : 65535;
    const slen = Math.floor(rnd() * 33);
    out.push(
      rule({
        allow: rnd() < 0.3,
        dst: { addr: (a & mask(len)) >>> 0, len },
        src: rnd() < 0.3 ? { addr: (a & mask(slen)) >>> 0, len: slen } : null,
        proto,
        portLo: lo,
        portHi: hi,
      }),
    );
  }
  return out;
}

t.test("the trie finds the same first match as a linear scan, on random rules", async (t) => {
  const u32 = seeded(7);
  const rnd = () => u32() / 2 ** 32;
  let mismatches = 0;
  let matched = 0;
  let checked = 0;
  for (const n of [1, 5, 50, 500, 3000]) {
    const rules = randomRules(rnd, n);
    const p = new EgressPolicy(rules);
    for (let k = 0; k < 4000; k++) {
      // Half the probes come from a rule's own prefix, so matches are frequent.
      const r = rules[Math.floor(rnd() * rules.length)] as EgressRule;
      const noise = (rnd() * 0x100000000) >>> 0;
      const dst =
        rnd() < 0.5 ? (r.dst.addr | (noise & ~mask(r.dst.len))) >>> 0 : (rnd() * 2 ** 32) >>> 0;
      const src = rnd() < 0.5 && r.src ? (r.src.addr | (noise & ~mask(r.src.len))) >>> 0 : noise;
      const proto = [1, 6, 17][Math.floor(rnd() * 3)] as number;
      const dport = rnd() < 0.5 ? r.portLo : Math.floor(rnd() * 65536);
      const want = matchLinear(rules, proto, src, dst, dport);
      if (p.match(proto, src, dst, dport) !== want) mismatches++;
      if (want >= 0) matched++;
      checked++;
    }
  }
  t.equal(mismatches, 0, `no mismatch in ${checked} lookups`);
  t.ok(matched > checked / 4, `the probes matched rules often (${matched})`);
});

t.test("the first rule in order wins, not the most specific prefix", async (t) => {
  const p = new EgressPolicy([
    rule({ allow: true, dst: { addr: 0x0a000000, len: 8 } }),
    rule({ dst: { addr: 0x0a010200, len: 24 } }),
  ]);
  t.equal(p.match(6, 1, 0x0a010203, 80), 0);
  t.equal(p.decide(6, 1, 0x0a010203, 80), -1, "allowed by rule 1");
  const q = new EgressPolicy([
    rule({ dst: { addr: 0x0a010200, len: 24 }, answer: EgressAnswer.Rst }),
    rule({ allow: true, dst: { addr: 0x0a000000, len: 8 } }),
  ]);
  t.equal(q.decide(6, 1, 0x0a010203, 80), 0, "denied by rule 1");
  t.equal(q.answer(0), EgressAnswer.Rst);
  t.equal(q.matched[0], 1);
  t.equal(q.refusals, 1);
  t.equal(q.lastDst, 0x0a010203);
});

t.test("a rule with ports matches TCP and UDP in its range only, never ICMP", async (t) => {
  const p = new EgressPolicy([rule({ portLo: 25, portHi: 25 })]);
  t.equal(p.match(6, 0, 1, 25), 0);
  t.equal(p.match(17, 0, 1, 25), 0);
  t.equal(p.match(6, 0, 1, 26), -1);
  t.equal(p.match(1, 0, 1, 25), -1);
});

t.test("a source prefix narrows a rule to those inside hosts", async (t) => {
  const p = new EgressPolicy([rule({ src: { addr: 0x0a000100, len: 25 } })]);
  t.equal(p.match(17, 0x0a000105, 5, 53), 0);
  t.equal(p.match(17, 0x0a000185, 5, 53), -1);
});

t.test("no rules allow everything", async (t) => {
  const p = new EgressPolicy([]);
  t.equal(p.decide(6, 1, 2, 3), -1);
  t.equal(p.size, 0);
});
