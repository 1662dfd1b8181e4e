/**
 * The text forms of egress rules (--egress, "egress" in the config file) and port forwards
 * (--forward, "forwards"), parsed into the core's EgressRule and Forward. Syntax (docs/security.md):
 *
 *   egress rule:  ACTION [to=PREFIX] [from=PREFIX] [proto=tcp|udp|icmp|any] [ports=LO[-HI]]
 *                 [answer=icmp|rst|silent]
 *                 ACTION is allow or deny. to= is the destination (default 0.0.0.0/0), from= an
 *                 inside source prefix (default any), ports= the destination port range (TCP and
 *                 UDP only), answer= how a refused flow is told (deny only; default icmp = ICMP
 *                 3/13; rst = a TCP RST for TCP, ICMP 3/13 otherwise; silent = nothing).
 *                 In the config file a rule may also be an object with the same keys and "action".
 *   forward:      PROTO:[NATADDR:]PORT=INSIDEADDR[:PORT]
 *                 tcp:443=10.0.1.10:8443; udp:5353=10.0.1.10 (same port inside); NATADDR names
 *                 one NAT address (default: every NAT address).
 *
 * A parse failure returns a string that names the field and what was expected; the config loader
 * puts the rule's text and number in front of it.
 */
import type { Forward } from "../nat/config.js";
import { EgressAnswer, type EgressRule } from "../nat/egress.js";
import { formatCidr, parseCidr, parseIpv4 } from "../wire/addr.js";

const PROTOS: Record<string, number> = { any: 0, icmp: 1, tcp: 6, udp: 17 };
const EGRESS_FIELDS = ["to", "from", "proto", "ports", "answer"] as const;

/** A parse failure: which field and why. */
export class RuleError {
  constructor(
    readonly field: string,
    readonly why: string,
  ) {}
  toString(): string {
    return `field "${this.field}": ${this.why}`;
  }
}

function prefix(field: string, text: string): { addr: number; len: number } | RuleError {
  const c = parseCidr(text);
  if (!c)
    return new RuleError(field, `expected an IPv4 prefix like 198.51.100.0/24, got "${text}"`);
  if (c.hostBits)
    return new RuleError(field, `host bits are set in "${text}"; did you mean ${formatCidr(c)}?`);
  return { addr: c.addr, len: c.len };
}

function portRange(field: string, text: string): [number, number] | RuleError {
  const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(text);
  const why = `expected a port or range LO-HI within 0-65535 with LO <= HI, got "${text}"`;
  if (!m) return new RuleError(field, why);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (hi > 65535 || lo > hi) return new RuleError(field, why);
  return [lo, hi];
}

/** Parse one egress rule written as text. */
export function parseEgressRule(text: string): EgressRule | RuleError {
  const words = text.trim().split(/\s+/);
  const action = words[0] ?? "";
  if (action !== "allow" && action !== "deny")
    return new RuleError("action", `expected "allow" or "deny" first, got "${action}"`);
  const seen = new Set<string>();
  const rule: EgressRule = {
    allow: action === "allow",
    dst: { addr: 0, len: 0 },
    src: null,
    proto: 0,
    portLo: 0,
    portHi: 65535,
    answer: EgressAnswer.Icmp,
    text: words.join(" "),
  };
  let portsGiven = false;
  for (const w of words.slice(1)) {
    const eq = w.indexOf("=");
    const key = eq < 0 ? w : w.slice(0, eq);
    const val = eq < 0 ? "" : w.slice(eq + 1);
    if (!(EGRESS_FIELDS as readonly string[]).includes(key))
      return new RuleError(key, `unknown field; known fields: ${EGRESS_FIELDS.join(", ")}`);
    if (eq < 0 || val === "") return new RuleError(key, `expected ${key}=VALUE`);
    if (seen.has(key)) return new RuleError(key, "given twice");
    seen.add(key);
    if (key === "to" || key === "from") {
      const p = prefix(key, val);
      if (p instanceof RuleError) return p;
      if (key === "to") rule.dst = p;
      else rule.src = p;
    } else if (key === "proto") {
      const p = PROTOS[val];
      if (p === undefined)
        return new RuleError(key, `expected tcp, udp, icmp or any, got "${val}"`);
      rule.proto = p;
    } else if (key === "ports") {
      const r = portRange(key, val);
      if (r instanceof RuleError) return r;
      [rule.portLo, rule.portHi] = r;
      portsGiven = true;
    } else {
      const a = ["icmp", "rst", "silent"].indexOf(val);
      if (a < 0) return new RuleError(key, `expected icmp, rst or silent, got "${val}"`);
      if (rule.allow) return new RuleError(key, "an allow rule refuses nothing to answer");
      rule.answer = a as EgressAnswer;
    }
  }
  if (portsGiven && rule.proto === 1)
    return new RuleError("ports", "ICMP has no ports; use proto=tcp, udp or any");
  return rule;
}

/** A rule from the config file: a string, or an object with "action" and the fields. */
export function egressRuleText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v !== "object" || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const parts = [String(o.action ?? "")];
  for (const [k, x] of Object.entries(o)) {
    if (k === "action") continue;
    if (typeof x !== "string" && typeof x !== "number") return null;
    parts.push(`${k}=${String(x)}`);
  }
  return parts.join(" ");
}

function port(field: string, text: string): number | RuleError {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535)
    return new RuleError(field, `expected a port 1..65535, got "${text}"`);
  return Number(text);
}

/** Parse one forward, PROTO:[NATADDR:]PORT=INSIDEADDR[:PORT]. */
export function parseForward(text: string): Forward | RuleError {
  const eq = text.indexOf("=");
  if (eq < 0)
    return new RuleError(
      "forward",
      'expected PROTO:[NATADDR:]PORT=INSIDEADDR[:PORT], e.g. "tcp:443=10.0.1.10:8443"',
    );
  const outer = text.slice(0, eq).split(":");
  const inner = text.slice(eq + 1).split(":");
  const protoText = outer[0] ?? "";
  if (protoText !== "tcp" && protoText !== "udp")
    return new RuleError("proto", `expected tcp or udp, got "${protoText}"`);
  if (outer.length < 2 || outer.length > 3)
    return new RuleError("port", "expected PROTO:PORT or PROTO:NATADDR:PORT before '='");
  let natAddress: number | null = null;
  if (outer.length === 3) {
    natAddress = parseIpv4(outer[1] ?? "");
    if (natAddress < 0)
      return new RuleError("nat address", `expected an IPv4 address, got "${outer[1]}"`);
  }
  const p = port("port", outer[outer.length - 1] ?? "");
  if (p instanceof RuleError) return p;
  if (inner.length > 2) return new RuleError("inside", "expected INSIDEADDR or INSIDEADDR:PORT");
  const inside = parseIpv4(inner[0] ?? "");
  if (inside < 0)
    return new RuleError("inside address", `expected an IPv4 address, got "${inner[0] ?? ""}"`);
  let insidePort = p;
  if (inner.length === 2) {
    const ip = port("inside port", inner[1] ?? "");
    if (ip instanceof RuleError) return ip;
    insidePort = ip;
  }
  return { proto: protoText === "tcp" ? 6 : 17, natAddress, port: p, inside, insidePort, text };
}
