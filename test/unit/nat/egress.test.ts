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

/** Probes around the rules: half inside a random rule's destination, ports at its range ends. */
function probe(rnd: () => number, rules: EgressRule[]) {
  const r = rules[Math.floor(rnd() * rules.length)] as EgressRule;
  const noise = (rnd() * 0x100000000) >>> 0;
  const dst =
    rnd() < 0.7 ? (r.dst.addr | (noise & ~mask(r.dst.len))) >>> 0 : (rnd() * 2 ** 32) >>> 0;
  const src = rnd() < 0.6 && r.src ? (r.src.addr | (noise & ~mask(r.src.len))) >>> 0 : noise;
  const proto = [1, 6, 17][Math.floor(rnd() * 3)] as number;
  const x = rnd();
  const dport =
    x < 0.25 ? r.portLo : x < 0.5 ? r.portHi : x < 0.6 ? r.portHi + 1 : Math.floor(rnd() * 65536);
  return { proto, src, dst, dport: Math.min(dport, 65535) };
}

t.test("10,000 random nested rules: the same first match as a linear scan", async (t) => {
  // Few address blocks and every prefix length: deep chains of nodes with rules, each with its
  // own port ranges and source prefixes, so pushed segments grow until they must link up.
  const u32 = seeded(1414);
  const rnd = () => u32() / 2 ** 32;
  const bases = Array.from({ length: 4 }, () => (rnd() * 0x100000000) >>> 0);
  const rules: EgressRule[] = [];
  for (let i = 0; i < 10_000; i++) {
    const len = Math.floor(rnd() * 33);
    const base = bases[Math.floor(rnd() * bases.length)] as number;
    const a = ((base & 0xffffff00) | ((rnd() * 256) >>> 0)) >>> 0;
    const proto = [0, 1, 6, 17][Math.floor(rnd() * 4)] as number;
    const ported = proto !== 1 && rnd() < 0.7;
    const lo = ported ? Math.floor(rnd() * 65536) : 0;
    const hi = ported ? Math.min(65535, lo + Math.floor(rnd() * 300)) : 65535;
    const slen = 8 + Math.floor(rnd() * 25);
    rules.push(
      rule({
        allow: rnd() < 0.5,
        dst: { addr: (a & mask(len)) >>> 0, len },
        src: rnd() < 0.3 ? { addr: (a & mask(slen)) >>> 0, len: slen } : null,
        proto,
        portLo: lo,
        portHi: hi,
      }),
    );
  }
  const p = new EgressPolicy(rules);
  const seg = p.segments;
  t.ok(
    seg.linked > 0,
    `some segments link up rather than grow (${seg.linked} of ${seg.fast + seg.slow})`,
  );
  let mismatches = 0;
  let matched = 0;
  const N = 20_000;
  for (let k = 0; k < N; k++) {
    const q = probe(rnd, rules);
    const want = matchLinear(rules, q.proto, q.src, q.dst, q.dport);
    if (p.match(q.proto, q.src, q.dst, q.dport) !== want) mismatches++;
    if (want >= 0) matched++;
  }
  t.equal(mismatches, 0, `no mismatch in ${N} lookups`);
  t.ok(matched > N / 4, `the probes matched rules often (${matched})`);
});

t.test("10,000 random rules spread over the address space (a large jump table)", async (t) => {
  const u32 = seeded(99);
  const rnd = () => u32() / 2 ** 32;
  const rules: EgressRule[] = [];
  for (let i = 0; i < 10_000; i++) {
    const len = Math.floor(rnd() * 33);
    const a = (rnd() * 2 ** 32) >>> 0;
    const proto = [0, 1, 6, 17][Math.floor(rnd() * 4)] as number;
    const ported = proto !== 1 && rnd() < 0.3;
    const lo = ported ? Math.floor(rnd() * 65536) : 0;
    const hi = ported ? Math.min(65535, lo + Math.floor(rnd() * 5000)) : 65535;
    rules.push(
      rule({
        allow: rnd() < 0.5,
        dst: { addr: (a & mask(len)) >>> 0, len },
        src: rnd() < 0.2 ? { addr: 0x0a000000, len: 8 } : null,
        proto,
        portLo: lo,
        portHi: hi,
      }),
    );
  }
  const p = new EgressPolicy(rules);
  t.ok(p.nodes > 10_000, `a large trie (${p.nodes} nodes)`);
  let mismatches = 0;
  const N = 20_000;
  for (let k = 0; k < N; k++) {
    const q = probe(rnd, rules);
    if (rnd() < 0.5) q.src = (0x0a000000 | (q.src & 0xffffff)) >>> 0;
    const want = matchLinear(rules, q.proto, q.src, q.dst, q.dport);
    if (p.match(q.proto, q.src, q.dst, q.dport) !== want) mismatches++;
  }
  t.equal(mismatches, 0, `no mismatch in ${N} lookups`);
});

t.test("rules on one path are pushed into one segment at the deepest node", async (t) => {
  // 10.0.0.0/8 > 10.1.0.0/16 > 10.1.2.0/24 > 10.1.2.3/32, each with a rule without a source.
  const p = new EgressPolicy([
    rule({ proto: 6, dst: { addr: 0x0a010203, len: 32 }, portLo: 443, portHi: 443 }),
    rule({ proto: 6, dst: { addr: 0x0a010200, len: 24 }, portLo: 80, portHi: 80 }),
    rule({ proto: 6, dst: { addr: 0x0a010000, len: 16 }, allow: true }),
    rule({ proto: 6, dst: { addr: 0x0a000000, len: 8 } }),
  ]);
  t.same(p.segments, { fast: 4, slow: 0, linked: 0 }, "every segment holds its whole path");
  t.equal(p.match(6, 1, 0x0a010203, 443), 0);
  t.equal(p.match(6, 1, 0x0a010203, 80), 1);
  t.equal(p.match(6, 1, 0x0a010203, 22), 2);
  t.equal(p.match(6, 1, 0x0a020203, 22), 3);
  t.equal(p.match(6, 1, 0x0b020203, 22), -1);
  t.equal(p.match(17, 1, 0x0a010203, 443), -1, "no UDP rule: no lookup");
});

t.test("a node whose merged segment would grow too large links up instead", async (t) => {
  // 500 rules on 10.0.0.0/8, each one port: a partition of ~1,000 intervals. A /24 below with one
  // rule links up to it rather than copying it.
  const rules: EgressRule[] = [];
  for (let i = 0; i < 500; i++)
    rules.push(rule({ proto: 6, dst: { addr: 0x0a000000, len: 8 }, portLo: 2 * i, portHi: 2 * i }));
  rules.push(rule({ proto: 6, dst: { addr: 0x0a010200, len: 24 }, allow: true }));
  const p = new EgressPolicy(rules);
  t.same(p.segments, { fast: 2, slow: 0, linked: 1 });
  t.equal(p.match(6, 1, 0x0a010203, 998), 499, "the /8's rule, found through the link");
  t.equal(p.match(6, 1, 0x0a010203, 999), 500, "the /24's rule");
  t.equal(p.match(6, 1, 0x0a020203, 999), -1);
});
