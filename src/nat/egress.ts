/**
 * Egress policy: allow/deny rules by destination prefix, protocol and port range, optionally per
 * inside source prefix, evaluated once when a flow would be created (never per packet of an
 * existing flow). The first rule that matches decides, in configuration order; a flow no rule
 * matches is allowed.
 *
 * The rules are indexed by destination in a binary trie per protocol (TCP, UDP, ICMP; a rule for
 * any protocol is in each it applies to): each rule hangs at the trie node of its destination
 * prefix, so a lookup walks at most 33 nodes along the destination's bits and looks only at rules
 * whose destination covers it. Within a node, the rules without a source prefix are folded into
 * a sorted interval partition of the port space, each interval holding the lowest-numbered rule
 * that covers it, so a node costs one binary search however many rules it holds; rules with a
 * source prefix are kept in rule order and scanned until one matches or none can beat the best
 * match so far. Each node also knows the lowest rule number below it, so a subtree that cannot
 * beat the best match is not entered. Everything is typed arrays built once (a reload builds a
 * new policy); match() allocates nothing.
 *
 * The policy counts per rule the flows it matched (refused, for a deny rule) and the flows a
 * reload ended; it keeps the last refusal's tuple for the control plane's rate-limited log. It
 * never logs itself.
 */
/** A prefix: network address (host order, masked) and length 0..32. */
interface Prefix {
  addr: number;
  len: number;
}

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

/** One protocol's destination trie (see the file comment). */
class Trie {
  /** Children (-1 = none). */
  private readonly child: Int32Array;
  /** Each node's prefix: address, mask, length. */
  private readonly addr: Uint32Array;
  private readonly mask: Uint32Array;
  private readonly plen: Uint8Array;
  /** Lowest rule number in each node's subtree (n = none). */
  private readonly subMin: Int32Array;
  /** Each node's port intervals: starts in `bounds`, lowest covering rule in `bmin` (n = none). */
  private readonly bStart: Int32Array;
  private readonly bCount: Int32Array;
  private readonly bounds: Int32Array;
  private readonly bmin: Int32Array;
  /** Each node's rules with a source prefix, in rule order. */
  private readonly sStart: Int32Array;
  private readonly sCount: Int32Array;
  /** Slow rules by port: per node its intervals (sbStart, sbCount) into sBounds; per interval
   * the rules covering it, in order (sLStart, sLCount into slow). */
  private readonly sBounds: Int32Array;
  private readonly sLStart: Int32Array;
  private readonly sLCount: Int32Array;
  private readonly slow: Int32Array;

  constructor(
    rules: readonly EgressRule[],
    ids: readonly number[],
    private readonly n: number,
    private readonly src: Uint32Array,
    private readonly srcMask: Uint32Array,
    private readonly portLo: Uint16Array,
    private readonly portHi: Uint16Array,
    /** ICMP: ports do not apply (a rule with ports is never in this trie). */
    portless: boolean,
  ) {
    const bchild: number[] = [-1, -1];
    const bfast: number[][] = [[]];
    const bslow: number[][] = [[]];
    const baddr: number[] = [0];
    const blen: number[] = [0];
    for (const i of ids) {
      const r = rules[i] as EgressRule;
      let node = 0;
      const a = (r.dst.addr & maskOf(r.dst.len)) >>> 0;
      for (let d = 0; d < r.dst.len; d++) {
        const bit = (a >>> (31 - d)) & 1;
        let c = bchild[node * 2 + bit] as number;
        if (c < 0) {
          c = bfast.length;
          bfast.push([]);
          bslow.push([]);
          bchild.push(-1, -1);
          baddr.push((a & maskOf(d + 1)) >>> 0);
          blen.push(d + 1);
          bchild[node * 2 + bit] = c;
        }
        node = c;
      }
      ((r.src ? bslow : bfast)[node] as number[]).push(i);
    }
    // Path compression: keep the root, nodes with rules and nodes with two children; a kept
    // node's child is the next kept node below (its prefix is checked when it is reached).
    const kept = (v: number) =>
      v === 0 ||
      (bfast[v] as number[]).length > 0 ||
      (bslow[v] as number[]).length > 0 ||
      ((bchild[v * 2] as number) >= 0 && (bchild[v * 2 + 1] as number) >= 0);
    const follow = (c0: number): number => {
      let c = c0;
      while (c >= 0 && !kept(c))
        c =
          (bchild[c * 2] as number) >= 0
            ? (bchild[c * 2] as number)
            : (bchild[c * 2 + 1] as number);
      return c;
    };
    const fast: number[][] = [];
    const slow: number[][] = [];
    const child: number[] = [];
    const addr: number[] = [];
    const plen: number[] = [];
    // Preorder, so that children get higher numbers than their parent.
    const visit = (v: number): number => {
      const id = fast.length;
      fast.push(bfast[v] as number[]);
      slow.push(bslow[v] as number[]);
      addr.push(baddr[v] as number);
      plen.push(blen[v] as number);
      child.push(-1, -1);
      for (let b = 0; b < 2; b++) {
        const c = follow(bchild[v * 2 + b] as number);
        if (c >= 0) child[id * 2 + b] = visit(c);
      }
      return id;
    };
    visit(0);
    const nodes = fast.length;
    this.addr = Uint32Array.from(addr);
    this.mask = Uint32Array.from(plen, maskOf);
    this.plen = Uint8Array.from(plen);
    this.child = Int32Array.from(child);
    this.subMin = new Int32Array(nodes).fill(n);
    this.bStart = new Int32Array(nodes);
    this.bCount = new Int32Array(nodes);
    this.sStart = new Int32Array(nodes);
    this.sCount = new Int32Array(nodes);
    const bounds: number[] = [];
    const bmin: number[] = [];
    const slowAll: number[] = [];
    const sBounds: number[] = [];
    const sLStart: number[] = [];
    const sLCount: number[] = [];
    for (let v = 0; v < nodes; v++) {
      const f = fast[v] as number[];
      this.bStart[v] = bounds.length;
      if (f.length > 0) {
        const part = partition(f, portless ? null : portLo, portless ? null : portHi, n);
        for (let k = 0; k < part.starts.length; k++) {
          bounds.push(part.starts[k] as number);
          bmin.push(part.min[k] as number);
        }
      }
      this.bCount[v] = bounds.length - (this.bStart[v] as number);
      const sl = slow[v] as number[];
      // The node's source-prefix rules cut by port like the others: per interval, the rules
      // covering it in order, so a lookup looks only at rules whose ports match. Bounded: a node
      // whose lists would exceed SLOW_LIST_MAX entries keeps one interval with all its rules.
      this.sStart[v] = sBounds.length;
      const cuts = portless ? [0] : cutsOf(sl, portLo, portHi);
      let lists = cuts.map((c) =>
        sl.filter((r) => portless || ((portLo[r] as number) <= c && c <= (portHi[r] as number))),
      );
      if (lists.reduce((a, l) => a + l.length, 0) > SLOW_LIST_MAX + sl.length) {
        cuts.length = 1;
        cuts[0] = 0;
        lists = [sl];
      }
      for (let k = 0; k < cuts.length; k++) {
        sBounds.push(cuts[k] as number);
        sLStart.push(slowAll.length);
        sLCount.push((lists[k] as number[]).length);
        slowAll.push(...(lists[k] as number[]));
      }
      this.sCount[v] = sl.length > 0 ? cuts.length : 0;
      this.subMin[v] = Math.min(
        f.length > 0 ? (f[0] as number) : n,
        sl.length > 0 ? (sl[0] as number) : n,
      );
    }
    this.bounds = Int32Array.from(bounds);
    this.bmin = Int32Array.from(bmin);
    this.slow = Int32Array.from(slowAll);
    this.sBounds = Int32Array.from(sBounds);
    this.sLStart = Int32Array.from(sLStart);
    this.sLCount = Int32Array.from(sLCount);
    // Children have higher node numbers than their parent: a reverse pass is bottom-up.
    for (let v = nodes - 1; v >= 0; v--) {
      let m = this.subMin[v] as number;
      const c0 = this.child[v * 2] as number;
      const c1 = this.child[v * 2 + 1] as number;
      if (c0 >= 0 && (this.subMin[c0] as number) < m) m = this.subMin[c0] as number;
      if (c1 >= 0 && (this.subMin[c1] as number) < m) m = this.subMin[c1] as number;
      this.subMin[v] = m;
    }
  }

  get nodes(): number {
    return this.subMin.length;
  }

  match(src: number, dst: number, dport: number): number {
    // Locals: the loop reads nine arrays; through `this` each read would reload the field.
    const subMin = this.subMin;
    const bStart = this.bStart;
    const bCount = this.bCount;
    const bounds = this.bounds;
    const bmin = this.bmin;
    const sStart = this.sStart;
    const sCount = this.sCount;
    const child = this.child;
    const addr = this.addr;
    const mask = this.mask;
    let best = this.n;
    let node = 0;
    for (;;) {
      if ((dst & (mask[node] as number)) >>> 0 !== addr[node]) break;
      if ((subMin[node] as number) >= best) break;
      const bc = bCount[node] as number;
      if (bc > 0) {
        // The last interval starting at or below dport.
        let lo = bStart[node] as number;
        let hi = lo + bc - 1;
        while (lo < hi) {
          const mid = (lo + hi + 1) >>> 1;
          if ((bounds[mid] as number) <= dport) lo = mid;
          else hi = mid - 1;
        }
        const m = bmin[lo] as number;
        if (m < best) best = m;
      }
      const sc = sCount[node] as number;
      if (sc > 0) best = this.scanSlow(sStart[node] as number, sc, best, src, dport);
      const d = this.plen[node] as number;
      if (d === 32) break;
      const c = child[node * 2 + ((dst >>> (31 - d)) & 1)] as number;
      if (c < 0) break;
      node = c;
    }
    return best;
  }

  /** The first of a node's source-prefix rules that matches and beats `best`, else `best`. */
  private scanSlow(sb: number, sc: number, best: number, src: number, dport: number): number {
    // The node's interval holding dport, then its rules.
    let lo = sb;
    let hi = sb + sc - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if ((this.sBounds[mid] as number) <= dport) lo = mid;
      else hi = mid - 1;
    }
    const ss = this.sLStart[lo] as number;
    const se = ss + (this.sLCount[lo] as number);
    for (let k = ss; k < se; k++) {
      const r = this.slow[k] as number;
      if (r >= best) return best;
      if (dport < (this.portLo[r] as number) || dport > (this.portHi[r] as number)) continue;
      if ((src & (this.srcMask[r] as number)) >>> 0 !== this.src[r]) continue;
      return r;
    }
    return best;
  }
}

/** Entries a node's per-interval lists of source-prefix rules may hold beyond one per rule. */
const SLOW_LIST_MAX = 4096;

/** Interval starts of the port space cut at the range ends of `ids`, sorted, from 0. */
function cutsOf(ids: readonly number[], lo: Uint16Array, hi: Uint16Array): number[] {
  const cuts = new Set<number>([0]);
  for (const r of ids) {
    cuts.add(lo[r] as number);
    if ((hi[r] as number) < 65535) cuts.add((hi[r] as number) + 1);
  }
  return [...cuts].sort((a, b) => a - b);
}

/**
 * The port space 0..65535 cut at every rule's range ends; per interval, the lowest rule number
 * covering it (n = none). `ids` are in rule order, so painting each rule's range over the
 * intervals not yet painted (a skip list of unpainted intervals) gives each its lowest rule, in
 * time linear in rules + intervals. Without port arrays every rule covers everything.
 */
function partition(
  ids: readonly number[],
  lo: Uint16Array | null,
  hi: Uint16Array | null,
  n: number,
): { starts: number[]; min: number[] } {
  if (lo === null || hi === null) return { starts: [0], min: [ids[0] as number] };
  const starts = cutsOf(ids, lo, hi);
  const min = new Array<number>(starts.length).fill(n);
  // next[k]: the first unpainted interval at or after k (path-compressed).
  const next = Array.from({ length: starts.length + 1 }, (_, k) => k);
  const find = (k: number): number => {
    let r = k;
    while (next[r] !== r) r = next[r] as number;
    let x = k;
    while (next[x] !== r) {
      const y = next[x] as number;
      next[x] = r;
      x = y;
    }
    return r;
  };
  const indexOf = (port: number): number => {
    let a = 0;
    let b = starts.length - 1;
    while (a < b) {
      const m = (a + b + 1) >>> 1;
      if ((starts[m] as number) <= port) a = m;
      else b = m - 1;
    }
    return a;
  };
  for (const r of ids) {
    const last = indexOf(hi[r] as number);
    for (let k = find(indexOf(lo[r] as number)); k <= last; k = find(k + 1)) {
      min[k] = r;
      next[k] = k + 1;
    }
  }
  return { starts, min };
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

  private readonly allow: Uint8Array;
  private readonly answerOf: Uint8Array;
  private readonly tcp: Trie;
  private readonly udp: Trie;
  private readonly icmp: Trie;
  private readonly n: number;

  constructor(rules: readonly EgressRule[]) {
    this.rules = rules;
    const n = rules.length;
    this.n = n;
    this.matched = new Float64Array(n);
    this.ended = new Float64Array(n);
    this.allow = new Uint8Array(n);
    this.answerOf = new Uint8Array(n);
    const portLo = new Uint16Array(n);
    const portHi = new Uint16Array(n);
    const src = new Uint32Array(n);
    const srcMask = new Uint32Array(n);
    const ids: [number[], number[], number[]] = [[], [], []];
    for (let i = 0; i < n; i++) {
      const r = rules[i] as EgressRule;
      this.allow[i] = r.allow ? 1 : 0;
      this.answerOf[i] = r.answer;
      portLo[i] = r.portLo;
      portHi[i] = r.portHi;
      const sm = r.src ? maskOf(r.src.len) : 0;
      srcMask[i] = sm;
      src[i] = r.src ? (r.src.addr & sm) >>> 0 : 0;
      const ported = r.portLo > 0 || r.portHi < 65535;
      if (r.proto === 0 || r.proto === 6) ids[0].push(i);
      if (r.proto === 0 || r.proto === 17) ids[1].push(i);
      if ((r.proto === 0 && !ported) || r.proto === 1) ids[2].push(i);
    }
    // ICMP rules have no ports: give them the whole range so the slow-list check passes.
    for (const i of ids[2]) {
      if ((rules[i] as EgressRule).proto === 1) {
        portLo[i] = 0;
        portHi[i] = 65535;
      }
    }
    this.tcp = new Trie(rules, ids[0], n, src, srcMask, portLo, portHi, false);
    this.udp = new Trie(rules, ids[1], n, src, srcMask, portLo, portHi, false);
    this.icmp = new Trie(rules, ids[2], n, src, srcMask, portLo, portHi, true);
  }

  get size(): number {
    return this.n;
  }

  /** Trie nodes over the three protocols (for tests and the bench). */
  get nodes(): number {
    return this.tcp.nodes + this.udp.nodes + this.icmp.nodes;
  }

  /**
   * The first rule matching a new flow (proto, inside source, destination, destination port), or
   * -1 when none does. `dport` is ignored for ICMP. Counts nothing.
   */
  match(proto: number, src: number, dst: number, dport: number): number {
    if (this.n === 0) return -1;
    const t = proto === 6 ? this.tcp : proto === 17 ? this.udp : proto === 1 ? this.icmp : null;
    if (t === null) return -1;
    const best = t.match(src >>> 0, dst >>> 0, proto === 1 ? 0 : dport);
    return best < this.n ? best : -1;
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
