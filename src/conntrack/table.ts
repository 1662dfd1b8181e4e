/**
 * conntrack/ — the NAT's connection table, pure TypeScript: no I/O, no clock (callers pass `now`
 * in whole seconds), no allocation on the packet path, no throwing there either.
 *
 * Contract:
 * - A flow is an integer id in [0, capacity). Its fields live in typed arrays indexed by that id
 *   (struct of arrays, like VPP's session pools and passt's flow table); translate.ts reads them
 *   directly. An id stays valid until the flow is removed, and may then be reused.
 * - Two open-addressing indexes find a flow by its inside tuple (proto, inside addr:port, remote
 *   addr:port) and by its outside tuple (proto, NAT addr:port, remote addr:port). Power-of-two
 *   sizes, load <= 3/4, linear probing, backward-shift deletion (no tombstones), hashed with a
 *   per-process random seed.
 * - Endpoint-independent mappings (RFC 4787 REQ-1, RFC 5382 REQ-1) are a table of their own:
 *   (proto, inside addr:port) -> (NAT address, port), with a count of the flows that use it. A
 *   mapping lives as long as its last flow. The port allocator's slot for (NAT address, proto,
 *   port) holds the mapping id, so the outside lookup of a mapping costs one array read.
 * - Expiry is a stamp: a lookup that finds an expired flow removes it and misses; sweep() walks a
 *   slice of the table per tick. Nothing else removes flows except eviction: when the table is
 *   full, the oldest flow that never saw traffic in the reply direction goes (a FIFO ring of
 *   creation order, stale entries skipped); a replied flow is never evicted; with no candidate the
 *   new flow is refused and counted.
 * - Memory is fixed at construction (typed arrays only): about 100 bytes per flow at the
 *   default capacity, 120 with the mapping log's fields; see memoryBytes() and the unit test.
 */
import { Proto, protoSlot, type Timeouts } from "../base/protocols.js";
import { Admission } from "./admission.js";
import type { ConntrackConfig } from "./config.js";
import { flowDeltas } from "./deltas.js";
import { EvictionList } from "./eviction.js";
import { hashTuple, indexSlots, Prng, randomSeed } from "./hash.js";
import { FlowEvent, type FlowHooks } from "./hooks.js";
import { HostTable } from "./hosts.js";
import { TupleIndex } from "./index.js";
import { MappingTable } from "./mappings.js";
import { NatPool, PortAllocator, RESERVED, type TupleProbe } from "./ports.js";
import {
  CTR_BYTES,
  CTR_F64,
  CTR_U32,
  FLAG_BITS,
  FlowFlag,
  MAX_CAPACITY,
  R_DELTAS,
  R_EXPIRES,
  R_FLAGS,
  R_IADDR,
  R_OADDR,
  R_PORTS,
  R_RADDR,
  R_RPORT_PROTO_STATE,
  REC,
} from "./record.js";
import { Refusal } from "./refusal.js";
import { forEachFlow, hostTraffic, portUsage } from "./scans.js";
import { type ConntrackStats, STATE_SLOTS } from "./stats.js";
import { TcpState, tcpNext } from "./tcp-state.js";
import { TimeoutTable } from "./timeouts.js";

export { Proto } from "../base/protocols.js";
export { FlowEvent, type FlowHooks } from "./hooks.js";
export { FlowFlag } from "./record.js";
export { Refusal } from "./refusal.js";

/** FlowTable.adopt() results other than a flow id. */
const ADOPT_NOT_OURS = -1;
export const ADOPT_CONFLICT = -2;
export const ADOPT_FULL = -3;

/** Slots examined to find expired flows before evicting a live one. */
const FULL_SWEEP_BUDGET = 64;

export class FlowTable implements TupleProbe {
  readonly capacity: number;
  /**
   * Flow records, 8 words each, so one lookup touches one 32-byte record instead of a dozen
   * arrays (at a million flows each array is a separate cache miss). Word layout (R_* below):
   * inside addr, NAT addr, remote addr, rport | proto << 16 | state << 24, iport | oport << 16,
   * expiry second (free slots: free-list link), ipDelta | l4Delta << 16, flags.
   * Read fields with the accessors (iaddr(f), oport(f), ...); proto 0 marks a free slot.
   */
  readonly rec: Uint32Array;
  /** Per-flow byte counters (out, in) at f * 3; packet counters share the buffer (pkt). */
  readonly ctr: Float64Array;
  /** Per-flow packet counters (out, in) at f * 6 + 4, in the same buffer as ctr. */
  readonly pkt: Uint32Array;
  /** Live flows. */
  active = 0;
  /** Live endpoint-independent mappings (per-destination mode: always 0). */
  get mappings(): number {
    return this.maps.live;
  }
  /**
   * Flow slots and eviction-list entries examined to make room (sweep and eviction) since
   * construction; with ports.examined, the work an insert costs (tests and the bench read it).
   */
  examined = 0;

  readonly pool: NatPool;
  readonly ports: PortAllocator;
  readonly hosts: HostTable;
  readonly timeouts: TimeoutTable;

  /** Endpoint-independent mappings (empty in per-destination mode), indexed by mapping id. */
  readonly maps: MappingTable;
  /** Per-destination mode with a mappingRemoved hook: creation second of each flow. */
  readonly fCreated: Uint32Array;

  private readonly seed: number;
  private readonly prng: Prng;
  private readonly eim: boolean;
  private readonly admission: Admission;
  private readonly inIdx: TupleIndex;
  private readonly outIdx: TupleIndex;
  private readonly logRemovals: boolean;
  private freeHead: number;
  /** The unreplied flows, oldest first: the victims of a full table (see takeSlot). */
  private readonly evictable: EvictionList;
  private sweepCursor = 0;
  // The outside tuple being allocated in per-destination mode (read by outsideTupleFree).
  private probeProto = 0;
  private probeOaddr = 0;
  private probeRaddr = 0;
  private probeRport = 0;

  constructor(
    cfg: ConntrackConfig,
    readonly stats: ConntrackStats,
    private readonly hooks: FlowHooks = {},
  ) {
    const cap = Math.floor(cfg.maxFlows);
    if (!(cap >= 1 && cap <= MAX_CAPACITY)) {
      throw new RangeError(`maxFlows must be 1..${MAX_CAPACITY}, got ${cfg.maxFlows}`);
    }
    if (cfg.natAddresses.length > 65535) throw new RangeError("at most 65535 NAT addresses");
    this.capacity = cap;
    this.seed = (cfg.hashSeed ?? randomSeed()) | 0;
    this.prng = new Prng(this.seed ^ 0x2545f491);
    this.eim = cfg.mapping !== "per-destination";
    this.timeouts = new TimeoutTable(cfg.timeouts);
    this.logRemovals = typeof hooks.mappingRemoved === "function";

    this.rec = new Uint32Array(cap * REC);
    const counters = new ArrayBuffer(cap * CTR_BYTES);
    this.ctr = new Float64Array(counters);
    this.pkt = new Uint32Array(counters);
    this.evictable = new EvictionList(this.rec, cap);
    // Free list threaded through `expires` (a free slot has no expiry): next id + 1, 0 ends it.
    for (let f = 0; f < cap - 1; f++) this.rec[f * REC + R_EXPIRES] = f + 2;
    this.freeHead = 0;

    const slots = indexSlots(cap);
    this.inIdx = new TupleIndex(slots, this.seed, this.rec, R_IADDR, 0);
    this.outIdx = new TupleIndex(slots, this.seed ^ 0x68e31da4, this.rec, R_OADDR, 16);

    const mcap = this.eim ? cap : 0;
    this.maps = new MappingTable(mcap, slots, this.seed ^ 0x1b56c4e9, this.logRemovals);
    this.fCreated = new Uint32Array(!this.eim && this.logRemovals ? cap : 0);

    this.pool = new NatPool(cfg.natAddresses, this.seed ^ 0x3c6ef372);
    this.ports = new PortAllocator(
      this.pool.size,
      cfg.portLo,
      cfg.portHi,
      cfg.portReuseDelay,
      this.prng,
      this.eim ? null : this,
    );
    // Static forwards: their outside ports are never handed out to a dynamic mapping.
    for (const fw of cfg.forwards ?? []) {
      const pi = protoSlot(fw.proto);
      for (let a = 0; a < this.pool.size; a++) {
        if (fw.natAddress !== null && this.pool.addrs[a] !== fw.natAddress >>> 0) continue;
        this.ports.reserve(a, pi, fw.port);
      }
    }
    // Hosts: one slot per 32 flows (a 16 k-host table at the default 262,144 flows), at most 256 k.
    this.hosts = new HostTable(Math.min(262144, Math.ceil(cap / 32)), this.seed ^ 0x0b4611a1);
    this.admission = new Admission(cfg, this.eim, this.hosts, cap, this.seed ^ 0x7f4a7c15);
  }

  /** New idle timeouts (SIGHUP reload); each flow takes them at its next refresh. */
  setTimeouts(t: Timeouts): void {
    this.timeouts.set(t);
  }

  // ---------------------------------------------------------------- flow fields

  proto(f: number): number {
    return (this.rec[f * REC + R_RPORT_PROTO_STATE] >>> 16) & 0xff;
  }
  /** TcpState for TCP; for UDP and ICMP 0, or 1 once replied. */
  state(f: number): number {
    return this.rec[f * REC + R_RPORT_PROTO_STATE] >>> 24;
  }
  iaddr(f: number): number {
    return this.rec[f * REC + R_IADDR];
  }
  oaddr(f: number): number {
    return this.rec[f * REC + R_OADDR];
  }
  raddr(f: number): number {
    return this.rec[f * REC + R_RADDR];
  }
  iport(f: number): number {
    return this.rec[f * REC + R_PORTS] & 0xffff;
  }
  oport(f: number): number {
    return this.rec[f * REC + R_PORTS] >>> 16;
  }
  rport(f: number): number {
    return this.rec[f * REC + R_RPORT_PROTO_STATE] & 0xffff;
  }
  /** Last second the flow is alive (it expires when now > expires). */
  expires(f: number): number {
    return this.rec[f * REC + R_EXPIRES];
  }
  /** RFC 1624 delta of the outbound IPv4 header change (inside addr -> NAT addr). */
  ipDelta(f: number): number {
    return this.rec[f * REC + R_DELTAS] & 0xffff;
  }
  /**
   * Outbound transport checksum delta: TCP/UDP: address (pseudo-header) and port change;
   * ICMP echo: the identifier change only (the ICMP checksum has no pseudo-header).
   */
  l4Delta(f: number): number {
    return this.rec[f * REC + R_DELTAS] >>> 16;
  }
  /** FlowFlag bits. */
  flags(f: number): number {
    return this.rec[f * REC + R_FLAGS] & FLAG_BITS;
  }
  pktsOut(f: number): number {
    return this.pkt[f * CTR_U32 + 4];
  }
  pktsIn(f: number): number {
    return this.pkt[f * CTR_U32 + 5];
  }
  bytesOut(f: number): number {
    return this.ctr[f * CTR_F64];
  }
  bytesIn(f: number): number {
    return this.ctr[f * CTR_F64 + 1];
  }
  /** Count traffic from inside to outside. */
  addOut(f: number, pkts: number, bytes: number): void {
    this.pkt[f * CTR_U32 + 4] += pkts;
    this.ctr[f * CTR_F64] += bytes;
  }
  /** Count traffic from outside to inside. */
  addIn(f: number, pkts: number, bytes: number): void {
    this.pkt[f * CTR_U32 + 5] += pkts;
    this.ctr[f * CTR_F64 + 1] += bytes;
  }
  /** Set a flow's counters (an adopted flow takes those of its record). */
  setCounters(f: number, pktsOut: number, bytesOut: number, pktsIn: number, bytesIn: number): void {
    this.pkt[f * CTR_U32 + 4] = pktsOut;
    this.pkt[f * CTR_U32 + 5] = pktsIn;
    this.ctr[f * CTR_F64] = bytesOut;
    this.ctr[f * CTR_F64 + 1] = bytesIn;
  }

  /** Change a live flow's state, moving it between the flowsByState counts. */
  private setState(f: number, st: number): void {
    const i = f * REC + R_RPORT_PROTO_STATE;
    const w = this.rec[i];
    const b = protoSlot((w >>> 16) & 0xff) * STATE_SLOTS;
    const byState = this.stats.flowsByState;
    byState[b + (w >>> 24)]--;
    byState[b + st]++;
    this.rec[i] = (w & 0x00ffffff) | (st << 24);
  }
  private setExpires(f: number, v: number): void {
    this.rec[f * REC + R_EXPIRES] = v;
  }
  /** The first packet in the reply direction: the flow leaves the eviction list for good. */
  private setReplied(f: number): void {
    const i = f * REC + R_FLAGS;
    if ((this.rec[i] & FlowFlag.REPLIED) !== 0) return;
    this.evictable.unlink(f);
    this.rec[i] |= FlowFlag.REPLIED;
    this.hooks.flowEvent?.(FlowEvent.CHANGED, f);
  }

  // ---------------------------------------------------------------- lookups (per packet)

  /** Flow for (proto, inside addr:port, remote addr:port), or -1. An expired flow is removed. */
  lookupInside(
    proto: number,
    iaddr: number,
    iport: number,
    raddr: number,
    rport: number,
    now: number,
  ): number {
    return this.live(this.inIdx.find(proto, iaddr >>> 0, iport, raddr >>> 0, rport), now);
  }

  /** Flow for (proto, NAT addr:port, remote addr:port), or -1. An expired flow is removed. */
  lookupOutside(
    proto: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    now: number,
  ): number {
    return this.live(this.outIdx.find(proto, oaddr >>> 0, oport, raddr >>> 0, rport), now);
  }

  /** `f` if it is a flow still alive at `now`; an expired one is removed (an idle timeout). */
  private live(f: number, now: number): number {
    if (f < 0 || this.expires(f) >= now) return f;
    this.stats.idleTimeouts++;
    this.stats.idleTimeoutsBySlot[protoSlot(this.proto(f))]++;
    this.removeFlow(f, now);
    return -1;
  }

  /**
   * Touch the index slot and flow record a coming lookup will need and return a word of it, so
   * that a batch can issue its cache misses together before translating (VPP's prefetch pass).
   */
  warm(
    inside: boolean,
    proto: number,
    addr: number,
    port: number,
    raddr: number,
    rport: number,
  ): number {
    const idx = inside ? this.inIdx : this.outIdx;
    const i = hashTuple(idx.seed, proto, addr >>> 0, raddr >>> 0, port, rport) & idx.mask;
    const f = idx.slots[i];
    return f < 0 ? 0 : this.rec[f * REC + R_EXPIRES] + this.ctr[f * CTR_F64];
  }

  /** Is `addr` one of the NAT addresses? (hairpin test) */
  isNatAddress(addr: number): boolean {
    return this.pool.indexOf(addr) >= 0;
  }

  /**
   * Does (oaddr, oport) hold a mapping (EIM) or any flow (per-destination) for `proto`? Tells a
   * filtered packet from an unsolicited one.
   */
  hasMapping(proto: number, oaddr: number, oport: number): boolean {
    const a = this.pool.indexOf(oaddr);
    return a >= 0 && this.ports.get(a, protoSlot(proto), oport) > 0;
  }

  /** The NAT address inside host `iaddr` leaves from (paired pooling), or 0 with no addresses. */
  natAddressFor(iaddr: number): number {
    return this.pool.size === 0 ? 0 : this.pool.addrs[this.pool.paired(iaddr)];
  }

  /** Index of `addr` in the NAT pool, or -1. */
  natAddressIndex(addr: number): number {
    return this.pool.indexOf(addr);
  }

  // ---------------------------------------------------------------- creation

  /**
   * New flow for an outbound packet; call it after lookupInside missed. Endpoint-independent
   * mode reuses the inside endpoint's mapping if it has one. Returns the flow id, or
   * -(1 + Refusal) (TableFull, PortExhausted, QuotaExceeded); the caller counts the drop.
   */
  createOutbound(
    proto: number,
    iaddr: number,
    iport: number,
    raddr: number,
    rport: number,
    now: number,
  ): number {
    const ia = iaddr >>> 0;
    const ra = raddr >>> 0;
    const stats = this.stats;
    // Take the slot first: an eviction may end a mapping, which must not be one we hold.
    const f = this.takeSlot(now);
    if (f < 0) {
      stats.tableFullEvents++;
      return -1 - Refusal.TableFull;
    }
    const pi = protoSlot(proto);
    let a: number;
    let oport: number;
    let m = -1;
    let newMapping = false;
    if (this.eim) {
      m = this.maps.find(proto, ia, iport);
      if (m < 0) {
        if (!this.admission.quotaAllows(ia, pi)) return this.refuse(f, Refusal.QuotaExceeded);
        if (this.pool.size === 0) return this.refuse(f, Refusal.PortExhausted);
        a = this.pool.paired(ia);
        oport = this.ports.allocate(a, pi, iport, now);
        if (oport < 0) return this.refuse(f, Refusal.PortExhausted);
        m = this.maps.add(proto, ia, iport, a, oport, now);
        this.ports.take(a, pi, oport, m + 1);
        newMapping = true;
      } else {
        a = this.maps.addr[m]!;
        oport = this.maps.oport[m]!;
      }
      this.maps.refs[m]++;
    } else {
      if (!this.admission.quotaAllows(ia, pi)) return this.refuse(f, Refusal.QuotaExceeded);
      if (this.pool.size === 0) return this.refuse(f, Refusal.PortExhausted);
      a = this.pool.paired(ia);
      this.probeProto = proto;
      this.probeOaddr = this.pool.addrs[a];
      this.probeRaddr = ra;
      this.probeRport = rport;
      oport = this.ports.allocate(a, pi, iport, now);
      if (oport < 0) return this.refuse(f, Refusal.PortExhausted);
      this.ports.take(a, pi, oport, 1);
      newMapping = true;
    }
    const oa = this.pool.addrs[a];
    this.initFlow(f, proto, ia, iport, oa, oport, ra, rport, now, 0);
    this.hosts.addFlow(ia, pi, newMapping);
    this.admission.flowAdded(m, ra);
    if (newMapping) {
      stats.mappingsCreated++;
      if (!this.eim && this.logRemovals) this.fCreated[f] = now;
      this.hooks.mappingCreated?.(proto, ia, iport, oa, oport, ra, rport, now);
    }
    return f;
  }

  /**
   * Inbound packet to (oaddr, oport) from (raddr, rport) that matched no flow. Per the filtering
   * mode (RFC 4787 REQ-8, RFC 5382 REQ-3), opens a flow on the existing mapping: always with
   * endpoint-independent filtering, with address-dependent filtering if the mapping already has
   * a flow to raddr, never with address-and-port-dependent. Returns the flow id, or
   * -(1 + Refusal): Unsolicited (no mapping), Filtered (policy; also every per-destination
   * port, which may be shared by several inside endpoints), TableFull. Counts nothing.
   */
  createInbound(
    proto: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    now: number,
  ): number {
    const a = this.pool.indexOf(oaddr);
    if (a < 0) return -1 - Refusal.Unsolicited;
    // Make room first: the sweep may end the very mapping looked up below (its last flow
    // expired), which must then not be used (that leaked a freed mapping id, corrupted the
    // mapping free list, and at last filled the mapping index so that a lookup never ended).
    if (this.freeHead < 0) this.sweep(now, FULL_SWEEP_BUDGET);
    const pi = protoSlot(proto);
    const v = this.ports.get(a, pi, oport);
    if (v <= 0 || v === RESERVED) return -1 - Refusal.Unsolicited;
    const m = v - 1;
    const ra = raddr >>> 0;
    const refusal = this.admission.inboundRefusal(m, ra);
    if (refusal >= 0) return -1 - refusal;
    // No eviction for inbound-opened flows: outsiders must not push out the inside's flows.
    const f = this.freeHead;
    if (f < 0) return -1 - Refusal.TableFull;
    this.freeHead = this.expires(f) - 1;
    this.maps.refs[m]++;
    const ia = this.maps.iaddr[m]!;
    this.initFlow(
      f,
      proto,
      ia,
      this.maps.iport[m]!,
      oaddr >>> 0,
      oport,
      ra,
      rport,
      now,
      FlowFlag.INBOUND,
    );
    this.hosts.addFlow(ia, pi, false);
    this.admission.flowAdded(m, ra);
    return f;
  }

  /**
   * Put in a flow that exists elsewhere (a restored state file, a standby's copy of its active
   * peer; conntrack/snapshot.ts applyFlow is the one caller): with its own outside address and
   * port, TCP state, FlowFlag bits and expiry second, and no hook but flowEvent called (the
   * mapping log saw its creation when it happened). A flow the table already holds with the same
   * inside tuple and outside endpoint is brought up to the given state, flags and expiry. A new
   * one's mapping is found or made on the given port, which must be free or that mapping's; a
   * static forward's flow (FlowFlag.FORWARD) takes no mapping and needs its port reserved for a
   * forward here. The per-host quota is not applied (the flow was admitted once). Control plane,
   * never per packet. Returns the flow id, or ADOPT_NOT_OURS (not one of the NAT addresses, or a
   * forward this configuration does not have), ADOPT_CONFLICT (the inside or outside tuple, the
   * inside endpoint's mapping or the port belongs to another flow: a caller that knows the
   * record is the truth removes those and retries), ADOPT_FULL (no free slot; nothing is
   * evicted). Counts flowsCreated (and mappingsCreated for a new mapping) like a new flow.
   */
  adopt(
    proto: number,
    iaddr: number,
    iport: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    state: number,
    flags: number,
    expires: number,
    now: number,
  ): number {
    const ia = iaddr >>> 0;
    const oa = oaddr >>> 0;
    const ra = raddr >>> 0;
    const a = this.pool.indexOf(oa);
    if (a < 0) return ADOPT_NOT_OURS;
    const forward = (flags & FlowFlag.FORWARD) !== 0;
    const known = this.inIdx.find(proto, ia, iport, ra, rport);
    if (known >= 0) {
      if (
        this.oaddr(known) !== oa ||
        this.oport(known) !== oport ||
        ((this.flags(known) & FlowFlag.FORWARD) !== 0) !== forward
      )
        return ADOPT_CONFLICT;
      this.setAdopted(known, state, flags, expires);
      return known;
    }
    if (this.outIdx.find(proto, oa, oport, ra, rport) >= 0) return ADOPT_CONFLICT;
    const pi = protoSlot(proto);
    const held = this.ports.get(a, pi, oport);
    if (forward ? held !== RESERVED : held === RESERVED)
      return forward ? ADOPT_NOT_OURS : ADOPT_CONFLICT;
    let m = -1;
    if (this.eim && !forward) {
      m = this.maps.find(proto, ia, iport);
      if (m >= 0 ? this.maps.addr[m] !== a || this.maps.oport[m] !== oport : held > 0)
        return ADOPT_CONFLICT;
    }
    if (this.freeHead < 0) return ADOPT_FULL;
    let newMapping = false;
    if (forward) {
      // Its port stays reserved; removing the flow releases nothing (like createForward).
    } else if (this.eim) {
      if (m < 0) {
        m = this.maps.add(proto, ia, iport, a, oport, now);
        this.ports.take(a, pi, oport, m + 1);
        newMapping = true;
      }
      this.maps.refs[m]++;
    } else {
      this.ports.take(a, pi, oport, 1);
      newMapping = true;
    }
    const f = this.freeHead;
    this.freeHead = this.expires(f) - 1;
    this.initFlow(f, proto, ia, iport, oa, oport, ra, rport, now, flags & ~FlowFlag.REPLIED);
    this.setAdopted(f, state, flags, expires);
    this.hosts.addFlow(ia, pi, newMapping);
    this.admission.flowAdded(m, ra);
    if (newMapping) {
      this.stats.mappingsCreated++;
      if (!this.eim && this.logRemovals) this.fCreated[f] = now;
    }
    return f;
  }

  /** An adopted flow's state, reply flag and expiry, keeping the live counts true. */
  private setAdopted(f: number, state: number, flags: number, expires: number): void {
    const prev = this.state(f);
    if (this.proto(f) === Proto.TCP && prev !== state) {
      if (prev === TcpState.ESTABLISHED) this.stats.tcpEstablishedNow--;
      if (state === TcpState.ESTABLISHED) this.stats.tcpEstablishedNow++;
    }
    this.setState(f, state & 0xff);
    if ((flags & FlowFlag.REPLIED) !== 0) this.setReplied(f);
    this.setExpires(f, expires >>> 0);
  }

  /** The endpoint-independent mapping id flow `f` uses, or -1 (per-destination mode). */
  mappingOf(f: number): number {
    if (!this.eim) return -1;
    const a = this.pool.indexOf(this.oaddr(f));
    return a < 0 ? -1 : this.ports.get(a, protoSlot(this.proto(f)), this.oport(f)) - 1;
  }

  /** The endpoint-independent mapping of (proto, inside addr:port), or -1. */
  findMapping(proto: number, iaddr: number, iport: number): number {
    return this.eim ? this.maps.find(proto, iaddr >>> 0, iport) : -1;
  }

  /** Mapping mode: endpoint-independent (true) or per-destination. */
  get endpointIndependent(): boolean {
    return this.eim;
  }

  /** The mapping log's removal bookkeeping (mCreated, fCreated, mBytes*) is kept. */
  get keepsRemovalLog(): boolean {
    return this.logRemovals;
  }

  /**
   * Inbound connection to a static forward's (oaddr, oport) from (raddr, rport), to reach (iaddr,
   * iport): a flow of its own, with no mapping (the port is reserved). Never evicts (outsiders
   * must not push out the inside's flows). Returns the flow id or -(1 + TableFull). Counts nothing.
   */
  createForward(
    proto: number,
    oaddr: number,
    oport: number,
    raddr: number,
    rport: number,
    iaddr: number,
    iport: number,
    now: number,
  ): number {
    if (this.freeHead < 0) this.sweep(now, FULL_SWEEP_BUDGET);
    const f = this.freeHead;
    if (f < 0) return -1 - Refusal.TableFull;
    this.freeHead = this.expires(f) - 1;
    const ia = iaddr >>> 0;
    this.initFlow(
      f,
      proto,
      ia,
      iport,
      oaddr >>> 0,
      oport,
      raddr >>> 0,
      rport,
      now,
      FlowFlag.INBOUND | FlowFlag.FORWARD,
    );
    this.hosts.addFlow(ia, protoSlot(proto), false);
    return f;
  }

  // ---------------------------------------------------------------- per-packet updates

  /** Set the flow's expiry to now + the timeout for its protocol and state. */
  refresh(flow: number, now: number): void {
    this.setExpires(flow, now + this.timeouts.forState(this.proto(flow), this.state(flow)));
  }

  /**
   * A UDP or ICMP packet of `flow` crossed (outbound or inbound): note a reply (which makes the
   * flow unevictable and its state 1) and refresh. RFC 4787 REQ-6: both directions refresh.
   */
  touch(flow: number, outbound: boolean, now: number): void {
    const fl = this.flags(flow);
    if ((fl & FlowFlag.REPLIED) === 0 && ((fl & FlowFlag.INBOUND) !== 0) === outbound) {
      this.setReplied(flow);
      if (this.proto(flow) !== Proto.TCP) this.setState(flow, 1);
    }
    this.setExpires(flow, now + this.timeouts.forState(this.proto(flow), this.state(flow)));
  }

  /**
   * TCP: apply a segment's flags to the state machine (tcp-state.ts), note a reply, count
   * attempts and establishments, and set the timer. Entering a state always sets its timer;
   * staying in FIN_BOTH or RST does not extend it (RFC 6146 §3.5.2.2: those timers run out).
   */
  tcpUpdate(flow: number, tcpFlags: number, outbound: boolean, now: number): void {
    const fl = this.flags(flow);
    if ((fl & FlowFlag.REPLIED) === 0 && ((fl & FlowFlag.INBOUND) !== 0) === outbound) {
      this.setReplied(flow);
    }
    const prev = this.state(flow);
    const next = tcpNext(prev, tcpFlags, outbound);
    if (next !== prev) {
      const stats = this.stats;
      this.setState(flow, next);
      if (prev === TcpState.ESTABLISHED) stats.tcpEstablishedNow--;
      if (next === TcpState.ESTABLISHED) {
        stats.tcpEstablishedNow++;
        // Back from RST (RFC 6146 TRANS) is the same connection, not a new establishment.
        if (prev !== TcpState.RST) stats.connectionsEstablished++;
      } else if (next === TcpState.SYN_SENT) {
        stats.connectionAttempts++;
      }
      this.setExpires(flow, now + this.timeouts.tcp[next]);
      this.hooks.flowEvent?.(FlowEvent.CHANGED, flow);
    } else if (next !== TcpState.FIN_BOTH && next !== TcpState.RST) {
      this.setExpires(flow, now + this.timeouts.tcp[next]);
    }
  }

  // ---------------------------------------------------------------- removal and expiry

  /** Remove a live flow (no counter but flowsRemoved). */
  remove(flow: number, now: number): void {
    this.removeFlow(flow, now);
  }

  /** Examine up to `budget` slots from a cursor and remove expired flows. Returns removed count. */
  sweep(now: number, budget: number): number {
    const cap = this.capacity;
    let c = this.sweepCursor;
    let removed = 0;
    this.examined += budget;
    for (let n = 0; n < budget; n++) {
      if (this.proto(c) !== 0 && this.expires(c) < now) {
        this.stats.idleTimeouts++;
        this.stats.idleTimeoutsBySlot[protoSlot(this.proto(c))]++;
        this.removeFlow(c, now);
        removed++;
      }
      if (++c === cap) c = 0;
    }
    this.sweepCursor = c;
    return removed;
  }

  // ---------------------------------------------------------------- control plane (may allocate)

  // The scans themselves live in scans.ts; these keep them at hand on the table.

  /** Call fn(flowId) for each live flow. */
  forEach(fn: (flow: number) => void): void {
    forEachFlow(this, fn);
  }

  /** Ports (echo ids for ICMP) in use and free on NAT address `addrIndex` for `proto`. */
  portUsage(addrIndex: number, proto: number): { used: number; free: number } {
    return portUsage(this, addrIndex, proto);
  }

  /** Traffic per tracked inside host, finished and live flows together (see scans.ts). */
  hostTraffic(
    fn: (addr: number, pktsOut: number, bytesOut: number, pktsIn: number, bytesIn: number) => void,
  ): void {
    hostTraffic(this, fn);
  }

  /** Bytes held in typed arrays by the table and everything it owns. */
  memoryBytes(): number {
    let n = 0;
    for (const a of [
      this.rec,
      this.ctr,
      this.fCreated,
      this.inIdx.slots,
      this.outIdx.slots,
      this.pool.addrs,
    ]) {
      n += a.byteLength;
    }
    n += this.ports.memoryBytes();
    n += this.hosts.memoryBytes();
    n += this.maps.memoryBytes();
    n += this.evictable.memoryBytes();
    n += this.admission.memoryBytes();
    return n;
  }

  /** Per-destination allocation: is (probe proto, NAT addr:port, remote) free? */
  outsideTupleFree(port: number): boolean {
    return (
      this.outIdx.find(this.probeProto, this.probeOaddr, port, this.probeRaddr, this.probeRport) < 0
    );
  }

  // ---------------------------------------------------------------- internals

  /** Give back a slot taken for a flow that could not be made; return the refusal. */
  private refuse(f: number, reason: number): number {
    this.setExpires(f, this.freeHead + 1);
    this.freeHead = f;
    if (reason === Refusal.PortExhausted) this.stats.portAllocationErrors++;
    return -1 - reason;
  }

  /**
   * A free flow slot, evicting the oldest unreplied flow if need be; -1 if none. Bounded work: a
   * sweep of FULL_SWEEP_BUDGET slots, then the head of the eviction list.
   */
  private takeSlot(now: number): number {
    if (this.freeHead < 0) {
      this.sweep(now, FULL_SWEEP_BUDGET);
      if (this.freeHead < 0) {
        const victim = this.evictable.head;
        this.examined++;
        if (victim < 0) return -1;
        this.stats.evictions++;
        this.stats.tableFullEvents++;
        this.removeFlow(victim, now);
      }
    }
    const f = this.freeHead;
    this.freeHead = this.expires(f) - 1;
    return f;
  }

  private initFlow(
    f: number,
    proto: number,
    ia: number,
    iport: number,
    oa: number,
    oport: number,
    ra: number,
    rport: number,
    now: number,
    flag: number,
  ): void {
    const b = f * REC;
    const rec = this.rec;
    rec[b + R_IADDR] = ia;
    rec[b + R_OADDR] = oa;
    rec[b + R_RADDR] = ra;
    rec[b + R_RPORT_PROTO_STATE] = rport | (proto << 16);
    rec[b + R_PORTS] = (iport | (oport << 16)) >>> 0;
    rec[b + R_EXPIRES] = now + this.timeouts.forState(proto, 0);
    rec[b + R_DELTAS] = flowDeltas(proto, ia, iport, oa, oport);
    const c = f * CTR_F64;
    this.ctr[c] = 0;
    this.ctr[c + 1] = 0;
    this.ctr[c + 2] = 0; // both packet counters
    rec[b + R_FLAGS] = flag;
    this.inIdx.insert(f);
    this.outIdx.insert(f);
    this.evictable.push(f);
    this.active++;
    this.stats.flowsCreated++;
    this.stats.flowsByState[protoSlot(proto) * STATE_SLOTS]++;
    this.hooks.flowEvent?.(FlowEvent.CREATED, f);
  }

  private removeFlow(f: number, now: number): void {
    const p = this.proto(f);
    if (p === 0) return;
    this.hooks.flowEvent?.(FlowEvent.REMOVED, f);
    if ((this.rec[f * REC + R_FLAGS] & FlowFlag.REPLIED) === 0) this.evictable.unlink(f);
    this.inIdx.delete(f);
    this.outIdx.delete(f);
    const stats = this.stats;
    if (p === Proto.TCP && this.state(f) === TcpState.ESTABLISHED) stats.tcpEstablishedNow--;
    const pi = protoSlot(p);
    const ia = this.iaddr(f);
    const oa = this.oaddr(f);
    const op = this.oport(f);
    const ra = this.raddr(f);
    const a = this.pool.indexOf(oa);
    let mappingGone = true;
    const forward = (this.rec[f * REC + R_FLAGS] & FlowFlag.FORWARD) !== 0;
    const m = this.eim && !forward ? this.ports.get(a, pi, op) - 1 : -1;
    if (forward) {
      mappingGone = false;
    } else if (m >= 0) {
      this.admission.flowRemoved(m, ra);
      const maps = this.maps;
      if (this.logRemovals) {
        maps.bytesOut[m] += this.bytesOut(f);
        maps.bytesIn[m] += this.bytesIn(f);
      }
      if (--maps.refs[m] === 0) {
        this.ports.release(a, pi, op, now);
        stats.mappingsRemoved++;
        if (this.logRemovals) {
          this.hooks.mappingRemoved?.(
            p,
            ia,
            maps.iport[m]!,
            oa,
            op,
            ra,
            this.rport(f),
            now,
            maps.created[m]!,
            maps.bytesOut[m]!,
            maps.bytesIn[m]!,
          );
        }
        maps.release(m);
      } else {
        mappingGone = false;
      }
    } else if (!this.eim) {
      this.ports.release(a, pi, op, now);
      stats.mappingsRemoved++;
      if (this.logRemovals) {
        this.hooks.mappingRemoved?.(
          p,
          ia,
          this.iport(f),
          oa,
          op,
          ra,
          this.rport(f),
          now,
          this.fCreated[f],
          this.bytesOut(f),
          this.bytesIn(f),
        );
      }
    }
    this.hosts.removeFlow(
      ia,
      pi,
      mappingGone,
      this.pktsOut(f),
      this.bytesOut(f),
      this.pktsIn(f),
      this.bytesIn(f),
    );
    stats.flowsByState[pi * STATE_SLOTS + this.state(f)]--;
    // Proto 0 marks the slot free; the state goes with it.
    this.rec[f * REC + R_RPORT_PROTO_STATE] &= 0x0000ffff;
    this.rec[f * REC + R_FLAGS] = 0;
    this.setExpires(f, this.freeHead + 1);
    this.freeHead = f;
    this.active--;
    stats.flowsRemoved++;
  }
}
