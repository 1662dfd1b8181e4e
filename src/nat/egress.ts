/**
 * Egress policy: allow/deny rules by destination prefix, protocol and port range, optionally per
 * inside source prefix, evaluated once when a flow would be created (never per packet of an
 * existing flow). The first rule that matches decides, in configuration order; a flow no rule
 * matches is allowed.
 *
 * The rules are indexed by destination in a binary trie: each rule hangs at the trie node of its
 * destination prefix, so a lookup walks at most 33 nodes along the destination's bits and looks
 * only at rules whose destination covers it. Within a node, rules are kept in rule order and the
 * walk stops looking at a node once its rules cannot beat the best match found so far; each node
 * also knows the lowest rule number below it, so a subtree that cannot beat it is not entered.
 * Everything is typed arrays built once (a reload builds a new policy); match() allocates nothing.
 *
 * The policy counts per rule the flows it matched (refused, for a deny rule) and the flows a
 * reload ended; it keeps the last refusal's tuple for the control plane's rate-limited log. It
 * never logs itself.
 */
import type { Prefix } from "./config.js";

/** How a refused flow is answered. */
export const EgressAnswer = {
  /** ICMP destination unreachable, communication administratively prohibited (3/13). */
  Icmp: 0,
  /** A TCP RST (TCP flows; other protocols get ICMP 3/13). */
  Rst: 1,
  /** Nothing: the sender times out. */
  Silent: 2,
} as const;
export type EgressAnswer = (typeof EgressAnswer)[keyof typeof EgressAnswer];

export const EGRESS_ANSWER_NAMES = ["icmp", "rst", "silent"] as const;

/** One rule, already parsed and validated (control/policy-config.ts). */
export interface EgressRule {
  allow: boolean;
  /** Destination prefix (masked). */
  dst: Prefix;
  /** Inside source prefix (masked); null = any source. */
  src: Prefix | null;
  /** IPv4 protocol number (1, 6, 17), or 0 for any. */
  proto: number;
  /**
   * Destination port range, inclusive. A rule with a range narrower than 0-65535 matches TCP and
   * UDP only (ICMP has no ports).
   */
  portLo: number;
  portHi: number;
  answer: EgressAnswer;
  /** The rule as written, for metrics labels and logs. */
  text: string;
}

function maskOf(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

export class EgressPolicy {
  readonly rules: readonly EgressRule[];
  /** Flows matched per rule (for a deny rule: refused). */
  readonly matched: Float64Array;
  /** Flows ended per rule when a reload made them denied. */
  readonly ended: Float64Array;
  // The last refusal, for the control plane's rate-limited log.
  lastRule = -1;
  lastProto = 0;
  lastSrc = 0;
  lastDst = 0;
  lastPort = 0;
  /** Refusals since construction (all rules). */
  refusals = 0;

  // Per rule, in rule order.
  private readonly allow: Uint8Array;
  private readonly answerOf: Uint8Array;
  private readonly proto: Uint8Array;
  private readonly portLo: Uint16Array;
  private readonly portHi: Uint16Array;
  /** 1 when the rule has a port range narrower than everything (it then needs TCP or UDP). */
  private readonly ported: Uint8Array;
  private readonly srcAddr: Uint32Array;
  private readonly srcMask: Uint32Array;
  // The trie: children (-1 = none), each node's slice of `list`, the lowest rule in its subtree.
  private readonly child: Int32Array;
  private readonly start: Int32Array;
  private readonly count: Int32Array;
  private readonly subMin: Int32Array;
  private readonly list: Int32Array;
  private readonly n: number;

  constructor(rules: readonly EgressRule[]) {
    this.rules = rules;
    const n = rules.length;
    this.n = n;
    this.matched = new Float64Array(n);
    this.ended = new Float64Array(n);
    this.allow = new Uint8Array(n);
    this.answerOf = new Uint8Array(n);
    this.proto = new Uint8Array(n);
    this.portLo = new Uint16Array(n);
    this.portHi = new Uint16Array(n);
    this.ported = new Uint8Array(n);
    this.srcAddr = new Uint32Array(n);
    this.srcMask = new Uint32Array(n);
    // Build with plain arrays (control plane), then freeze into typed arrays.
    const child: number[] = [-1, -1];
    const lists: number[][] = [[]];
    for (let i = 0; i < n; i++) {
      const r = rules[i] as EgressRule;
      this.allow[i] = r.allow ? 1 : 0;
      this.answerOf[i] = r.answer;
      this.proto[i] = r.proto;
      this.portLo[i] = r.portLo;
      this.portHi[i] = r.portHi;
      this.ported[i] = r.portLo > 0 || r.portHi < 65535 ? 1 : 0;
      const sm = r.src ? maskOf(r.src.len) : 0;
      this.srcMask[i] = sm;
      this.srcAddr[i] = r.src ? (r.src.addr & sm) >>> 0 : 0;
      let node = 0;
      const a = (r.dst.addr & maskOf(r.dst.len)) >>> 0;
      for (let d = 0; d < r.dst.len; d++) {
        const bit = (a >>> (31 - d)) & 1;
        let c = child[node * 2 + bit] as number;
        if (c < 0) {
          c = lists.length;
          lists.push([]);
          child.push(-1, -1);
          child[node * 2 + bit] = c;
        }
        node = c;
      }
      (lists[node] as number[]).push(i);
    }
    const nodes = lists.length;
    this.child = Int32Array.from(child);
    this.start = new Int32Array(nodes);
    this.count = new Int32Array(nodes);
    this.subMin = new Int32Array(nodes).fill(n);
    let total = 0;
    for (const l of lists) total += l.length;
    this.list = new Int32Array(total);
    let at = 0;
    for (let v = 0; v < nodes; v++) {
      const l = lists[v] as number[];
      this.start[v] = at;
      this.count[v] = l.length;
      for (const r of l) this.list[at++] = r;
    }
    // Children always have higher node numbers than their parent: a reverse pass is bottom-up.
    for (let v = nodes - 1; v >= 0; v--) {
      let m = this.count[v] > 0 ? (this.list[this.start[v]] as number) : n;
      const c0 = this.child[v * 2] as number;
      const c1 = this.child[v * 2 + 1] as number;
      if (c0 >= 0 && (this.subMin[c0] as number) < m) m = this.subMin[c0] as number;
      if (c1 >= 0 && (this.subMin[c1] as number) < m) m = this.subMin[c1] as number;
      this.subMin[v] = m;
    }
  }

  get size(): number {
    return this.n;
  }

  /** Trie nodes (for tests and the bench). */
  get nodes(): number {
    return this.start.length;
  }

  /**
   * The first rule matching a new flow (proto, inside source, destination, destination port), or
   * -1 when none does. `dport` is ignored for ICMP. Counts nothing.
   */
  match(proto: number, src: number, dst: number, dport: number): number {
    const n = this.n;
    if (n === 0) return -1;
    const hasPorts = proto === 6 || proto === 17;
    const list = this.list;
    let best = n;
    let node = 0;
    for (let d = 0; ; d++) {
      if ((this.subMin[node] as number) >= best) break;
      const s = this.start[node] as number;
      const e = s + (this.count[node] as number);
      for (let k = s; k < e; k++) {
        const r = list[k] as number;
        if (r >= best) break;
        const rp = this.proto[r] as number;
        if (rp !== 0 && rp !== proto) continue;
        if (this.ported[r] === 1) {
          if (!hasPorts || dport < (this.portLo[r] as number) || dport > (this.portHi[r] as number))
            continue;
        }
        if ((src & (this.srcMask[r] as number)) >>> 0 !== this.srcAddr[r]) continue;
        best = r;
        break;
      }
      if (d === 32) break;
      const c = this.child[node * 2 + ((dst >>> (31 - d)) & 1)] as number;
      if (c < 0) break;
      node = c;
    }
    return best < n ? best : -1;
  }

  /**
   * Decide a new flow: -1 = allowed (no rule, or an allow rule), else the deny rule's number.
   * Counts the match on its rule and, for a refusal, remembers the tuple.
   */
  decide(proto: number, src: number, dst: number, dport: number): number {
    const r = this.match(proto, src, dst, dport);
    if (r < 0) return -1;
    this.matched[r]!++;
    if (this.allow[r] === 1) return -1;
    this.refusals++;
    this.lastRule = r;
    this.lastProto = proto;
    this.lastSrc = src;
    this.lastDst = dst;
    this.lastPort = dport;
    return r;
  }

  /** Whether rule `r` (a deny rule) is answered with ICMP, RST or nothing. */
  answer(r: number): EgressAnswer {
    return this.answerOf[r] as EgressAnswer;
  }

  /** Would a flow be refused (no counting; for reload)? Returns the deny rule or -1. */
  denies(proto: number, src: number, dst: number, dport: number): number {
    const r = this.match(proto, src, dst, dport);
    return r >= 0 && this.allow[r] === 0 ? r : -1;
  }
}
