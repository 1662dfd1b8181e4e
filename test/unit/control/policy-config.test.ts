import t from "tap";
import { ErrorCode, exitCodeFor, TunnatError } from "../../../src/base/errors.js";
import { loadConfig } from "../../../src/control/config.js";
import { parseEgressRule, parseForward, RuleError } from "../../../src/control/policy-config.js";
import { EgressAnswer } from "../../../src/nat/egress.js";
import { parseIpv4 } from "../../../src/wire/addr.js";

const BASE = {
  inside: "10.0.1.0/24",
  "nat-address": "198.51.100.7",
  "inside-interface": "eth1",
  "outside-interface": "eth0",
};

function errorOf(fn: () => unknown): TunnatError {
  try {
    fn();
  } catch (e) {
    if (e instanceof TunnatError) return e;
    throw e;
  }
  throw new Error("expected a TunnatError");
}

t.test("an egress rule reads every field", async (t) => {
  const r = parseEgressRule(
    "deny to=198.51.100.0/24 from=10.0.1.0/25 proto=tcp ports=25-587 answer=rst",
  );
  if (r instanceof RuleError) throw new Error(String(r));
  t.equal(r.allow, false);
  t.same(r.dst, { addr: parseIpv4("198.51.100.0"), len: 24 });
  t.same(r.src, { addr: parseIpv4("10.0.1.0"), len: 25 });
  t.equal(r.proto, 6);
  t.equal(r.portLo, 25);
  t.equal(r.portHi, 587);
  t.equal(r.answer, EgressAnswer.Rst);
});

t.test("an egress rule's defaults: every destination, any protocol, ICMP 3/13", async (t) => {
  const r = parseEgressRule("deny");
  if (r instanceof RuleError) throw new Error(String(r));
  t.same(r.dst, { addr: 0, len: 0 });
  t.equal(r.src, null);
  t.equal(r.proto, 0);
  t.equal(r.portLo, 0);
  t.equal(r.portHi, 65535);
  t.equal(r.answer, EgressAnswer.Icmp);
});

t.test("a bad egress rule names the field", async (t) => {
  const cases: [string, string][] = [
    ["block to=1.2.3.0/24", "action"],
    ["deny to=1.2.3.4/24", "to"],
    ["deny to=1.2.3.0/33", "to"],
    ["deny from=10.0.0.0/8x", "from"],
    ["deny proto=sctp", "proto"],
    ["deny ports=70000", "ports"],
    ["deny ports=90-80", "ports"],
    ["deny proto=icmp ports=1", "ports"],
    ["deny answer=reject", "answer"],
    ["allow answer=rst", "answer"],
    ["deny port=25", "port"],
    ["deny to=1.0.0.0/8 to=2.0.0.0/8", "to"],
    ["deny to", "to"],
  ];
  for (const [text, field] of cases) {
    const r = parseEgressRule(text);
    t.ok(r instanceof RuleError && r.field === field, `${text}: field ${field} (${String(r)})`);
  }
});

t.test("a forward reads protocol, optional NAT address, ports and inside host", async (t) => {
  t.same(parseForward("tcp:443=10.0.1.10:8443"), {
    proto: 6,
    natAddress: null,
    port: 443,
    inside: parseIpv4("10.0.1.10"),
    insidePort: 8443,
    text: "tcp:443=10.0.1.10:8443",
  });
  const u = parseForward("udp:198.51.100.7:5353=10.0.1.11");
  if (u instanceof RuleError) throw new Error(String(u));
  t.equal(u.proto, 17);
  t.equal(u.natAddress, parseIpv4("198.51.100.7"));
  t.equal(u.insidePort, 5353, "the inside port defaults to the outside one");
});

t.test("a bad forward names the field", async (t) => {
  const cases: [string, string][] = [
    ["tcp:443", "forward"],
    ["icmp:1=10.0.1.1", "proto"],
    ["tcp:0=10.0.1.1", "port"],
    ["tcp:443=10.0.1:80", "inside address"],
    ["tcp:443=10.0.1.10:99999", "inside port"],
    ["tcp:1.2.3:443=10.0.1.10", "nat address"],
  ];
  for (const [text, field] of cases) {
    const r = parseForward(text);
    t.ok(r instanceof RuleError && r.field === field, `${text}: field ${field} (${String(r)})`);
  }
});

t.test("config: without rules or forwards there are none", async (t) => {
  const c = loadConfig({ flags: { ...BASE }, env: {} });
  t.same(c.nat.egress, []);
  t.same(c.nat.forwards, []);
});

t.test("config: egress rules from flags and from the file (strings or objects)", async (t) => {
  const c = loadConfig({
    flags: { ...BASE, egress: ["deny to=192.0.2.0/24 proto=udp", "allow"] },
    env: {},
  });
  t.equal(c.nat.egress.length, 2);
  t.equal(c.nat.egress[0]?.proto, 17);
  const f = loadConfig({
    flags: { ...BASE, config: "/x.json" },
    env: {},
    readFile: () =>
      JSON.stringify({
        egress: [
          "deny to=192.0.2.0/24",
          { action: "deny", proto: "tcp", ports: 25, answer: "silent" },
        ],
        forwards: ["tcp:443=10.0.1.10:8443"],
      }),
  });
  t.equal(f.nat.egress.length, 2);
  t.equal(f.nat.egress[1]?.portLo, 25);
  t.equal(f.nat.egress[1]?.answer, EgressAnswer.Silent);
  t.equal(f.nat.forwards.length, 1);
});

t.test("config: a bad rule exits 2 naming the rule, its number and the field", async (t) => {
  const e = errorOf(() =>
    loadConfig({ flags: { ...BASE, egress: ["deny", "deny to=10.0.0.0/8 proto=tcpp"] }, env: {} }),
  );
  t.equal(e.code, ErrorCode.Config);
  t.equal(exitCodeFor(e.code), 2);
  t.match(e.message, /^invalid --egress "deny to=10\.0\.0\.0\/8 proto=tcpp": egress rule 2, /);
  t.match(e.message, /field "proto"/);
  const fe = errorOf(() =>
    loadConfig({
      flags: { ...BASE, config: "/x.json" },
      env: {},
      readFile: () => JSON.stringify({ egress: [{ action: "deny", ports: "x" }] }),
    }),
  );
  t.match(fe.message, /"egress" in \/x\.json.*egress rule 1, field "ports"/);
});

t.test("config: a forward must reach an inside host, on a NAT address, once", async (t) => {
  t.match(
    errorOf(() => loadConfig({ flags: { ...BASE, forward: "tcp:443=192.168.1.1:443" }, env: {} }))
      .message,
    /forward 1, field "inside address"/,
  );
  t.match(
    errorOf(() =>
      loadConfig({ flags: { ...BASE, forward: "tcp:203.0.113.9:443=10.0.1.10" }, env: {} }),
    ).message,
    /field "nat address"/,
  );
  t.match(
    errorOf(() =>
      loadConfig({
        flags: { ...BASE, forward: ["tcp:443=10.0.1.10", "tcp:443=10.0.1.11"] },
        env: {},
      }),
    ).message,
    /forward 2, field "port": forward 1/,
  );
  const ok = loadConfig({
    flags: { ...BASE, forward: ["tcp:443=10.0.1.10", "udp:443=10.0.1.11"] },
    env: {},
  });
  t.equal(ok.nat.forwards.length, 2, "the same port for TCP and UDP is fine");
});
