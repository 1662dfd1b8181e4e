/**
 * Egress policy: allow/deny rules by destination prefix, protocol and port range, optionally per
 * inside source prefix, evaluated once when a flow would be created (never per packet of an
 * existing flow). The first rule that matches decides, in configuration order; a flow no rule
 * matches is allowed.
 *
 * The rules are indexed by destination in a binary trie per protocol (TCP, UDP, ICMP; a rule for
 * any protocol is in each it applies to): each rule hangs at the trie node of its destination
 * prefix, and at build time each node's rules are merged with its ancestors' (pushed down), so a
 * lookup walks the destination's bits to the deepest node that covers it and looks only there
 * (or along a short chain of segments where merging would cost too much memory; see Trie). The
 * rules without a source prefix are folded into a sorted interval partition of the port space,
 * each interval holding the lowest-numbered rule that covers it, so a segment costs one binary
 * search however many rules it holds; rules with a source prefix are kept per port interval in
 * rule order and scanned until one matches or none can beat the best match so far. Everything
 * is typed arrays built once (a reload builds a new policy); match() allocates nothing.
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

/** A node's port partition at build time: interval starts from 0, lowest covering rule each. */
interface FastPart {
  starts: number[];
  min: number[];
}

/** A node's source-prefix rules at build time: interval starts from 0, the rules of each. */
interface SlowPart {
  cuts: number[];
  lists: number[][];
}

/**
 * A pushed segment may hold up to this many entries, or twice its own node's, before a node
 * starts a new segment instead (see the Trie comment).
 */
const PUSH_MIN = 64;

/** Jump-table entries per trie node at most (the table has 2^K entries, K <= 16). */
const JUMP_PER_NODE = 16;

/** Bits a stride table resolves, the nodes below a node it needs, and entries per node in all. */
const STRIDE = 8;
const TABLE_MIN_BELOW = 4;
const TABLE_PER_NODE = 32;

/** A node record: prefix address and length, children, stride table and its bits, segments. */
const NODE_WORDS = 8;
const N_ADDR = 0;
const N_PLEN = 1;
const N_CHILD = 2;
const N_TABLE = 4;
const N_STRIDE = 5;
const N_FSEG = 6;
const N_SSEG = 7;

/** A segment record: its intervals (start, count), the next segment up, the chain's lowest rule. */
const SEG_WORDS = 4;
const S_START = 0;
const S_COUNT = 1;
const S_UP = 2;
const S_MIN = 3;

/**
 * One protocol's destination trie (see the file comment), path-compressed: only the root, nodes
 * with rules and nodes with two children are kept.
 *
 * The rules are pushed down the trie at build time: each node's rules are merged with those of
 * its ancestors into one segment (a port partition for the rules without a source prefix, per-
 * interval rule lists for the rest), so a lookup walks the destination's bits to the deepest
 * node whose prefix covers it and looks at one segment there, not at every node on the way. A
 * node without rules of a kind shares its parent's segment. Merging is bounded: when the merged
 * segment would hold more than max(PUSH_MIN, 2 x the node's own) entries, the node's segment holds
 * only its own rules and links up to its parent's, so memory stays linear in the rules and a
 * lookup follows a short chain of segments (at worst one per node with rules, as without
 * pushing). Each segment knows the lowest rule number on its chain, so a chain that cannot beat
 * the best match so far is left early. A jump table indexed by the destination's top K bits
 * starts the walk at the deepest node of at most K bits that covers it, and a node with many
 * nodes in the STRIDE levels below it has a stride table that does the same for the next STRIDE
 * bits, so a walk takes a few steps where the trie is dense (each step reads one node record).
 */
class Trie {
  /**
   * The nodes, one record of NODE_WORDS int32 each (what a step of the walk reads lies in one
   * cache line); a node is named by its record's offset. See the N_ constants.
   */
  private readonly nd: Int32Array;
  /** Top-K-bits jump table into the trie (record offsets), and 32 - K. */
  private readonly jump: Int32Array;
  private readonly shift: number;
  /** The stride tables of the nodes that have one (record offsets; see N_TABLE). */
  private readonly tables: Int32Array;
  /**
   * Fast segments, one record of SEG_WORDS each (named by its offset): intervals in bounds/bmin
   * (start, count), the next segment up (-1 = none), the chain's lowest rule.
   */
  private readonly fSegs: Int32Array;
  private readonly bounds: Int32Array;
  private readonly bmin: Int32Array;
  /**
   * Slow segments, records as fSegs: intervals in sBounds (start, count), next segment up,
   * chain's lowest rule; per interval the rules covering it, in rule order (sLStart, sLCount
   * into slow).
   */
  private readonly sSegs: Int32Array;
  private readonly sBounds: Int32Array;
  private readonly sLStart: Int32Array;
  private readonly sLCount: Int32Array;
  private readonly slow: Int32Array;
  /** Rules in this trie. */
  readonly size: number;

  constructor(
    rules: readonly EgressRule[],
    ids: readonly number[],
    private readonly n: number,
    private readonly src: Int32Array,
    private readonly srcMask: Int32Array,
    private readonly portLo: Uint16Array,
    private readonly portHi: Uint16Array,
    /** ICMP: ports do not apply (a rule with ports is never in this trie). */
    portless: boolean,
  ) {
    this.size = ids.length;
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
    const parent: number[] = [];
    const addr: number[] = [];
    const plen: number[] = [];
    // Preorder, so that a parent is numbered (and its segments built) before its children.
    const visit = (v: number, up: number): number => {
      const id = fast.length;
      fast.push(bfast[v] as number[]);
      slow.push(bslow[v] as number[]);
      addr.push(baddr[v] as number);
      plen.push(blen[v] as number);
      parent.push(up);
      child.push(-1, -1);
      for (let b = 0; b < 2; b++) {
        const c = follow(bchild[v * 2 + b] as number);
        if (c >= 0) child[id * 2 + b] = visit(c, id);
      }
      return id;
    };
    visit(0, -1);
    const nodes = fast.length;

    // The segments, parents first.
    const fSeg = new Int32Array(nodes).fill(-1);
    const sSeg = new Int32Array(nodes).fill(-1);
    const fParts: FastPart[] = [];
    const fUp: number[] = [];
    const fMin: number[] = [];
    const sParts: SlowPart[] = [];
    const sUp: number[] = [];
    const sMin: number[] = [];
    for (let v = 0; v < nodes; v++) {
      const p = parent[v] as number;
      const pf = p >= 0 ? (fSeg[p] as number) : -1;
      const ps = p >= 0 ? (sSeg[p] as number) : -1;
      fSeg[v] = pf;
      sSeg[v] = ps;
      const f = fast[v] as number[];
      if (f.length > 0) {
        const own = partition(f, portless ? null : portLo, portless ? null : portHi, n);
        let part = own;
        let up = pf;
        if (pf >= 0) {
          const merged = mergeFast(own, fParts[pf] as FastPart);
          if (merged.starts.length <= Math.max(PUSH_MIN, 2 * own.starts.length)) {
            part = merged;
            up = fUp[pf] as number;
          }
        }
        let m = up >= 0 ? (fMin[up] as number) : n;
        for (const x of part.min) if (x < m) m = x;
        fSeg[v] = fParts.length;
        fParts.push(part);
        fUp.push(up);
        fMin.push(m);
      }
      const sl = slow[v] as number[];
      if (sl.length > 0) {
        const own = slowPart(sl, portless, portLo, portHi);
        let part = own;
        let up = ps;
        if (ps >= 0) {
          const merged = mergeSlow(own, sParts[ps] as SlowPart);
          if (slowSize(merged) <= Math.max(PUSH_MIN, 2 * slowSize(own))) {
            part = merged;
            up = sUp[ps] as number;
          }
        }
        let m = up >= 0 ? (sMin[up] as number) : n;
        for (const l of part.lists) if (l.length > 0 && (l[0] as number) < m) m = l[0] as number;
        sSeg[v] = sParts.length;
        sParts.push(part);
        sUp.push(up);
        sMin.push(m);
      }
    }
    // Flatten into typed arrays.
    this.fSegs = new Int32Array(fParts.length * SEG_WORDS);
    const bounds: number[] = [];
    const bmin: number[] = [];
    fParts.forEach((part, s) => {
      const o = s * SEG_WORDS;
      this.fSegs[o + S_START] = bounds.length;
      this.fSegs[o + S_COUNT] = part.starts.length;
      this.fSegs[o + S_UP] = (fUp[s] as number) < 0 ? -1 : (fUp[s] as number) * SEG_WORDS;
      this.fSegs[o + S_MIN] = fMin[s] as number;
      for (let k = 0; k < part.starts.length; k++) {
        bounds.push(part.starts[k] as number);
        bmin.push(part.min[k] as number);
      }
    });
    this.bounds = Int32Array.from(bounds);
    this.bmin = Int32Array.from(bmin);
    this.sSegs = new Int32Array(sParts.length * SEG_WORDS);
    const sBounds: number[] = [];
    const sLStart: number[] = [];
    const sLCount: number[] = [];
    const slowAll: number[] = [];
    sParts.forEach((part, s) => {
      const o = s * SEG_WORDS;
      this.sSegs[o + S_START] = sBounds.length;
      this.sSegs[o + S_COUNT] = part.cuts.length;
      this.sSegs[o + S_UP] = (sUp[s] as number) < 0 ? -1 : (sUp[s] as number) * SEG_WORDS;
      this.sSegs[o + S_MIN] = sMin[s] as number;
      for (let k = 0; k < part.cuts.length; k++) {
        const l = part.lists[k] as number[];
        sBounds.push(part.cuts[k] as number);
        sLStart.push(slowAll.length);
        sLCount.push(l.length);
        for (const r of l) slowAll.push(r);
      }
    });
    this.sBounds = Int32Array.from(sBounds);
    this.sLStart = Int32Array.from(sLStart);
    this.sLCount = Int32Array.from(sLCount);
    this.slow = Int32Array.from(slowAll);

    // The jump table: per value of the top K bits, the deepest node of at most K bits covering
    // it. Preorder visits a node after its ancestors, so a deeper node overwrites their entries.
    let k = 1;
    while (k < 16 && 2 ** (k + 1) <= JUMP_PER_NODE * nodes) k++;
    this.shift = 32 - k;
    this.jump = new Int32Array(2 ** k);
    for (let v = 0; v < nodes; v++) {
      const d = plen[v] as number;
      if (d > k) continue;
      const first = (addr[v] as number) >>> (32 - k);
      this.jump.fill(v * NODE_WORDS, first, first + 2 ** (k - d));
    }

    // Stride tables: a node with many nodes in the STRIDE levels below it gets a table, indexed
    // by the destination's next STRIDE bits, of the deepest node there that covers it (as the
    // jump table does from the root). The nodes with the most such nodes first, up to
    // TABLE_PER_NODE entries per node in all.
    const below = new Int32Array(nodes);
    for (let w = 1; w < nodes; w++)
      for (let a = parent[w] as number; a >= 0; a = parent[a] as number) {
        if ((plen[w] as number) - (plen[a] as number) > STRIDE) break;
        below[a] = (below[a] as number) + 1;
      }
    const tableAt = new Int32Array(nodes).fill(-1);
    const stride = (v: number) => Math.min(STRIDE, 32 - (plen[v] as number));
    let budget = TABLE_PER_NODE * nodes;
    let used = 0;
    const candidates = [...below.keys()]
      .filter((v) => (below[v] as number) >= TABLE_MIN_BELOW && (plen[v] as number) < 32)
      .sort((a, b) => (below[b] as number) - (below[a] as number));
    for (const v of candidates) {
      const size = 2 ** stride(v);
      if (size > budget) break;
      budget -= size;
      tableAt[v] = used;
      used += size;
    }
    this.tables = new Int32Array(used);
    for (let v = 0; v < nodes; v++) {
      const at = tableAt[v] as number;
      if (at < 0) continue;
      const d = plen[v] as number;
      const sb = stride(v);
      // v itself, then its descendants within the stride, in preorder (deeper overwrites).
      this.tables.fill(v * NODE_WORDS, at, at + 2 ** sb);
      const fillFrom = (w: number) => {
        for (let b = 0; b < 2; b++) {
          const c = child[w * 2 + b] as number;
          if (c < 0 || (plen[c] as number) > d + sb) continue;
          const first = ((((addr[c] as number) << d) >>> 0) >>> (32 - sb)) >>> 0;
          this.tables.fill(
            c * NODE_WORDS,
            at + first,
            at + first + 2 ** (d + sb - (plen[c] as number)),
          );
          fillFrom(c);
        }
      };
      fillFrom(v);
    }

    // The node records.
    this.nd = new Int32Array(nodes * NODE_WORDS);
    for (let v = 0; v < nodes; v++) {
      const o = v * NODE_WORDS;
      const c0 = child[v * 2] as number;
      const c1 = child[v * 2 + 1] as number;
      this.nd[o + N_ADDR] = addr[v] as number;
      this.nd[o + N_PLEN] = plen[v] as number;
      this.nd[o + N_CHILD] = c0 < 0 ? -1 : c0 * NODE_WORDS;
      this.nd[o + N_CHILD + 1] = c1 < 0 ? -1 : c1 * NODE_WORDS;
      this.nd[o + N_TABLE] = tableAt[v] as number;
      this.nd[o + N_STRIDE] = (tableAt[v] as number) >= 0 ? stride(v) : 0;
      const f = fSeg[v] as number;
      const sg = sSeg[v] as number;
      this.nd[o + N_FSEG] = f < 0 ? -1 : f * SEG_WORDS;
      this.nd[o + N_SSEG] = sg < 0 ? -1 : sg * SEG_WORDS;
    }
  }

  get nodes(): number {
    return this.nd.length / NODE_WORDS;
  }

  /** Fast and slow segments, and those that link up to another (their chain is longer). */
  get segments(): { fast: number; slow: number; linked: number } {
    let linked = 0;
    for (const g of [this.fSegs, this.sSegs])
      for (let o = S_UP; o < g.length; o += SEG_WORDS) if ((g[o] as number) >= 0) linked++;
    return { fast: this.fSegs.length / SEG_WORDS, slow: this.sSegs.length / SEG_WORDS, linked };
  }

  match(src: number, dst: number, dport: number): number {
    // Locals: the loops read many arrays; through `this` each read would reload the field.
    const nd = this.nd;
    const tables = this.tables;
    const d32 = dst | 0;
    // The deepest node whose prefix covers dst: from the jump table's node, through stride
    // tables where a node has one, else a bit at a time.
    let node = this.jump[d32 >>> this.shift] as number;
    for (;;) {
      const d = nd[node + N_PLEN] as number;
      const tb = nd[node + N_TABLE] as number;
      if (tb >= 0) {
        const w = tables[tb + ((d32 << d) >>> (32 - (nd[node + N_STRIDE] as number)))] as number;
        if (w !== node) {
          node = w;
          continue;
        }
      }
      if (d === 32) break;
      const c = nd[node + N_CHILD + ((d32 >>> (31 - d)) & 1)] as number;
      // A child's prefix is at least one bit long: its mask is -1 << (32 - length).
      if (
        c < 0 ||
        ((d32 ^ (nd[c + N_ADDR] as number)) & (-1 << (32 - (nd[c + N_PLEN] as number)))) !== 0
      )
        break;
      node = c;
    }
    let best = this.n;
    const fSegs = this.fSegs;
    for (
      let s = nd[node + N_FSEG] as number;
      s >= 0 && (fSegs[s + S_MIN] as number) < best;
      s = fSegs[s + S_UP] as number
    ) {
      // The last interval starting at or below dport.
      let lo = fSegs[s + S_START] as number;
      let hi = lo + (fSegs[s + S_COUNT] as number) - 1;
      const bounds = this.bounds;
      while (lo < hi) {
        const mid = (lo + hi + 1) >>> 1;
        if ((bounds[mid] as number) <= dport) lo = mid;
        else hi = mid - 1;
      }
      const m = this.bmin[lo] as number;
      if (m < best) best = m;
    }
    const sSegs = this.sSegs;
    for (
      let s = nd[node + N_SSEG] as number;
      s >= 0 && (sSegs[s + S_MIN] as number) < best;
      s = sSegs[s + S_UP] as number
    )
      best = this.scanSlow(s, best, src | 0, dport);
    return best;
  }

  /** The first of a slow segment's rules that matches and beats `best`, else `best`. */
  private scanSlow(s: number, best: number, src: number, dport: number): number {
    // The segment's interval holding dport, then its rules.
    let lo = this.sSegs[s + S_START] as number;
    let hi = lo + (this.sSegs[s + S_COUNT] as number) - 1;
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
      if ((src & (this.srcMask[r] as number)) !== this.src[r]) continue;
      return r;
    }
    return best;
  }
}

/** Two port partitions merged: per interval the lower rule of the two; equal neighbours joined. */
function mergeFast(a: FastPart, b: FastPart): FastPart {
  const starts: number[] = [];
  const min: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.starts.length || j < b.starts.length) {
    const sa = i < a.starts.length ? (a.starts[i] as number) : 65536;
    const sb = j < b.starts.length ? (b.starts[j] as number) : 65536;
    const at = Math.min(sa, sb);
    if (sa === at) i++;
    if (sb === at) j++;
    // Both start at 0, so i and j are >= 1 here: the intervals holding `at`.
    const m = Math.min(a.min[i - 1] as number, b.min[j - 1] as number);
    if (min.length > 0 && min[min.length - 1] === m) continue;
    starts.push(at);
    min.push(m);
  }
  return { starts, min };
}

/**
 * A node's source-prefix rules cut by port like the others: per interval, the rules covering it
 * in order, so a lookup looks only at rules whose ports match. Bounded: a node whose lists would
 * exceed SLOW_LIST_MAX entries beyond one per rule keeps one interval with all its rules (the
 * lookup checks each rule's ports anyway).
 */
function slowPart(
  sl: number[],
  portless: boolean,
  portLo: Uint16Array,
  portHi: Uint16Array,
): SlowPart {
  if (portless) return { cuts: [0], lists: [sl] };
  const cuts = cutsOf(sl, portLo, portHi);
  const lists = cuts.map((c) =>
    sl.filter((r) => (portLo[r] as number) <= c && c <= (portHi[r] as number)),
  );
  if (lists.reduce((a, l) => a + l.length, 0) > SLOW_LIST_MAX + sl.length)
    return { cuts: [0], lists: [sl] };
  return { cuts, lists };
}

/** Entries a slow part costs: its intervals and the rules listed in them. */
function slowSize(p: SlowPart): number {
  let k = p.cuts.length;
  for (const l of p.lists) k += l.length;
  return k;
}

/** Two slow parts merged: the union of their cuts, per interval both lists in rule order. */
function mergeSlow(a: SlowPart, b: SlowPart): SlowPart {
  const cuts: number[] = [];
  const lists: number[][] = [];
  let i = 0;
  let j = 0;
  while (i < a.cuts.length || j < b.cuts.length) {
    const ca = i < a.cuts.length ? (a.cuts[i] as number) : 65536;
    const cb = j < b.cuts.length ? (b.cuts[j] as number) : 65536;
    const at = Math.min(ca, cb);
    if (ca === at) i++;
    if (cb === at) j++;
    cuts.push(at);
    lists.push(mergeSorted(a.lists[i - 1] as number[], b.lists[j - 1] as number[]));
  }
  return { cuts, lists };
}

/** Two ascending lists of distinct rule numbers as one. */
function mergeSorted(a: number[], b: number[]): number[] {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length)
    out.push((a[i] as number) < (b[j] as number) ? (a[i++] as number) : (b[j++] as number));
  while (i < a.length) out.push(a[i++] as number);
  while (j < b.length) out.push(b[j++] as number);
  return out;
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
    const src = new Int32Array(n);
    const srcMask = new Int32Array(n);
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

  /** Segments over the three protocols (for tests; see Trie). */
  get segments(): { fast: number; slow: number; linked: number } {
    const t = [this.tcp.segments, this.udp.segments, this.icmp.segments];
    return {
      fast: t.reduce((a, x) => a + x.fast, 0),
      slow: t.reduce((a, x) => a + x.slow, 0),
      linked: t.reduce((a, x) => a + x.linked, 0),
    };
  }

  /**
   * The first rule matching a new flow (proto, inside source, destination, destination port), or
   * -1 when none does. `dport` is ignored for ICMP. Counts nothing.
   */
  match(proto: number, src: number, dst: number, dport: number): number {
    if (this.n === 0) return -1;
    const t = proto === 6 ? this.tcp : proto === 17 ? this.udp : proto === 1 ? this.icmp : null;
    if (t === null || t.size === 0) return -1;
    const best = t.match(src, dst, proto === 1 ? 0 : dport);
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
