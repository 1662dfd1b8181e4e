/**
 * src/nat — the translation core.
 *
 * Contract: `Translator.process(buf, off, len)` takes one packet as the TUN device delivered it (a
 * virtio_net_hdr first when the config says so), decides, and rewrites it in place. It returns a
 * Verdict and leaves the length to send in `outLen`:
 *  - Forward: the packet was translated (outbound, inbound or hairpinned) and goes back to the TUN;
 *  - Drop: the packet is dropped; the reason is counted in `stats.drops` (and kept in `lastDrop`);
 *  - Reply: the core wrote its own packet (ICMP 3/13, or an RST in the `aws` preset) over the slot.
 * A non-first fragment that comes before its first fragment is held (RFC 4787 REQ-14): the verdict
 * is Drop but nothing is counted as dropped (`lastDrop` is -1, `stats.fragmentsHeld` rises). When
 * the first fragment passes, the held fragments of its datagram are translated as later fragments
 * are and queued; the caller sends them after its batch with `pendingOutput()`/`takeOutput()`.
 * It never throws on packet contents, allocates nothing and logs nothing. Time comes from the Clock.
 *
 * Direction is read from the addresses, because one TUN carries both ways (docs/architecture.md §Packet path): a source
 * inside an inside prefix is outbound; a destination that is a NAT address is inbound; outbound
 * traffic whose translated destination is a NAT address is hairpinned (RFC 4787 REQ-9, RFC 5382
 * REQ-8, RFC 5508 REQ-7): translated out, then back in.
 *
 * Checksums: address and port changes are applied with the flow's precomputed RFC 1624 deltas (the
 * VPP approach). With virtio NEEDS_CSUM the transport checksum holds only the pseudo-header sum, so
 * only the address part of the delta is applied to it; GSO super-packets are rewritten once and the
 * kernel segments them after we write them back.
 */
import type { Clock } from "../base/clock.js";
import { FlowFlag, type FlowTable, Refusal } from "../conntrack/table.js";
import { adjust, adjustPartial, delta16, fold, negate, sum } from "../wire/checksum.js";
import * as icmp from "../wire/icmp.js";
import * as ipv4 from "../wire/ipv4.js";
import * as tcp from "../wire/tcp.js";
import * as udp from "../wire/udp.js";
import * as vnet from "../wire/vnet.js";
import type { NatConfig } from "./config.js";
import { EgressAnswer, EgressPolicy } from "./egress.js";
import { Forwards } from "./forwards.js";
import { FRAGMENT_HOLD_MAX_BYTES, FragmentCache, FragmentStash } from "./fragments.js";
import {
  checkEmbedded,
  embeddedHeaderChecksumOk,
  rewriteEmbedded,
  writeIcmpError,
  writeRst,
} from "./icmp-error.js";
import { DropReason, type NatStats } from "./stats.js";

/** The drop each of the table's refusals counts as, indexed by Refusal value. */
const REFUSAL_DROP = new Uint8Array(5);
REFUSAL_DROP[Refusal.TableFull] = DropReason.TableFull;
REFUSAL_DROP[Refusal.PortExhausted] = DropReason.PortExhausted;
REFUSAL_DROP[Refusal.QuotaExceeded] = DropReason.QuotaExceeded;
REFUSAL_DROP[Refusal.Unsolicited] = DropReason.Unsolicited;
REFUSAL_DROP[Refusal.Filtered] = DropReason.Filtered;

export const Verdict = { Forward: 0, Drop: 1, Reply: 2 } as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

/** The TCP flags that decide whether a segment may open or pick up a flow. */
const TCP_OPEN_MASK = tcp.SYN | tcp.ACK | tcp.FIN | tcp.RST;

/** laterFragment's outcomes besides a DropReason (which are >= 0). */
const FRAGMENT_FORWARD = -1;
const FRAGMENT_HELD = -2;

/** Live flows from which a batch's lookups are prefetched (about where the table leaves L2). */
const PREFETCH_MIN_FLOWS = 65536;

export class Translator {
  /** Bytes to send from the slot's start after Forward or Reply (virtio header included). */
  outLen = 0;
  /**
   * The DropReason of the last Drop verdict (for tests and the flows tool); -1 when that packet
   * was an out-of-order fragment held for its first fragment.
   */
  lastDrop = -1;

  /** Egress rules, checked when an outbound packet would create a flow; setEgress() swaps them. */
  egress: EgressPolicy;
  /** Static forwards: the only inbound connections that may open a flow without a mapping. */
  readonly forwards: Forwards;

  private readonly insideAddr: Uint32Array;
  /** The NAT addresses, scanned directly when there are few (the usual case). */
  private readonly natAddrs: Uint32Array;
  private readonly insideMask: Uint32Array;
  /**
   * Per inside prefix, its last address when that and the network address are not host addresses
   * (length up to 30; RFC 3021 /31 and /32 have none), else 0 with the network check off.
   */
  private readonly insideBcast: Uint32Array;
  private readonly vnetHdr: boolean;
  private readonly restoreTtl: boolean;
  private readonly rstOnExpired: boolean;
  private readonly icmpProhibited: boolean;
  private readonly frags: FragmentCache;
  private readonly stash = new FragmentStash();
  // The datagram whose held fragments are released when process() ends, set by firstFragment().
  private relPending = false;
  private relSrc = 0;
  private relDst = 0;
  private relProto = 0;
  private relId = 0;
  private relOutbound = false;
  /** Set while held fragments are translated: one without state is then dropped, not held. */
  private releasing = false;
  private now = 0;
  /** IP ID of packets the core originates. */
  private ident = 0;
  // Per-packet scratch, set by process(): GSO segments and on-wire bytes this packet stands for.
  private segs = 1;
  private wireBytes = 0;
  private partial = false;

  /**
   * `table` is built by the caller from the same config (its ConntrackConfig part) and counts
   * into its own ConntrackStats; the translator counts everything else, drops included, in
   * `stats`.
   */
  constructor(
    cfg: NatConfig,
    readonly table: FlowTable,
    private readonly clock: Clock,
    private readonly stats: NatStats,
  ) {
    this.egress = new EgressPolicy(cfg.egress ?? []);
    this.forwards = new Forwards(cfg.forwards ?? []);
    this.insideAddr = new Uint32Array(cfg.inside.length);
    this.insideMask = new Uint32Array(cfg.inside.length);
    this.insideBcast = new Uint32Array(cfg.inside.length);
    cfg.inside.forEach((pfx, i) => {
      const mask = pfx.len === 0 ? 0 : (0xffffffff << (32 - pfx.len)) >>> 0;
      this.insideMask[i] = mask;
      this.insideAddr[i] = (pfx.addr & mask) >>> 0;
      this.insideBcast[i] = pfx.len <= 30 ? (this.insideAddr[i]! | ~mask) >>> 0 : 0;
    });
    this.natAddrs = Uint32Array.from(cfg.natAddresses);
    this.vnetHdr = cfg.vnetHdr;
    this.restoreTtl = cfg.restoreTtl;
    this.rstOnExpired = cfg.rstOnExpired;
    this.icmpProhibited = cfg.icmpAdminProhibited;
    const seed = cfg.hashSeed ?? (Math.random() * 0x100000000) >>> 0;
    this.frags = new FragmentCache(seed ^ 0x5bd1e995);
    this.ident = seed & 0xffff;
  }

  /** Whether `addr` lies in one of the inside prefixes. */
  isInside(addr: number): boolean {
    const n = this.insideAddr.length;
    for (let i = 0; i < n; i++) {
      if ((addr & this.insideMask[i]!) >>> 0 === this.insideAddr[i]) return true;
    }
    return false;
  }

  /**
   * Whether `addr`, inside an inside prefix, cannot be a host there: the prefix's network or
   * broadcast address (RFC 1812 §5.3.7: not a valid source). Such a source is spoofed; giving it
   * a flow would also give it a per-host series. The kernel drops it only under rp_filter.
   */
  private notAHost(addr: number): boolean {
    const n = this.insideAddr.length;
    for (let i = 0; i < n; i++) {
      if ((addr & this.insideMask[i]!) >>> 0 !== this.insideAddr[i]) continue;
      const b = this.insideBcast[i]!;
      return b !== 0 && (addr === this.insideAddr[i] || addr === b);
    }
    return false;
  }

  /**
   * A packet from an inside source to a NAT address (hairpinning) is translated out and then back
   * in; the way back needs a mapping on the destination port. Without one it would be dropped as
   * unsolicited anyway, so it is dropped before it makes an outbound flow. That matters because
   * such a packet can also come from outside, with a forged inside source, by the NAT address's
   * own route to the TUN: it must not get a flow, a port, quota or a per-host series for the
   * forged address. (To a port that has a mapping it is indistinguishable from real hairpinning
   * here; the kernel's source checks on the outside interface have to keep it out.) Fragments
   * after the first, ICMP errors and malformed headers go on to be handled as before.
   */
  private hairpinMayEnter(
    buf: Uint8Array,
    p: number,
    hl: number,
    tl: number,
    dst: number,
  ): boolean {
    if ((ipv4.flagsFrag(buf, p) & ipv4.FRAG_OFFSET_MASK) !== 0 || tl - hl < 8) return true;
    const proto = ipv4.protocol(buf, p);
    if (proto === ipv4.PROTO_TCP || proto === ipv4.PROTO_UDP) {
      return this.table.hasMapping(proto, dst, udp.dstPort(buf, p + hl));
    }
    // Echo requests to a NAT address are never answered (RFC 5508 REQ-11; README: no echo hairpin).
    return proto !== ipv4.PROTO_ICMP || icmp.type(buf, p + hl) !== icmp.ECHO_REQUEST;
  }

  /** Whether `addr` is one of the NAT addresses. */
  isNat(addr: number): boolean {
    const a = this.natAddrs;
    if (a.length > 8) return this.table.isNatAddress(addr);
    for (let i = 0; i < a.length; i++) if (a[i] === addr) return true;
    return false;
  }

  /** Expire idle flows incrementally; the data loop calls this once per tick. */
  sweep(budget: number): number {
    const now = Math.floor(this.clock.now() / 1000);
    this.expireHeld(now);
    return this.table.sweep(now, budget);
  }

  /** Translated fragments released from the stash and not yet taken (see takeOutput). */
  pendingOutput(): number {
    return this.stash.pending;
  }

  /**
   * Copy the next released fragment into buf at off, behind an all-zero virtio_net_hdr when the
   * config has one, and return its length (0 when none is queued). The caller provides room for
   * FRAGMENT_OUTPUT_MAX_BYTES.
   */
  takeOutput(buf: Uint8Array, off: number): number {
    if (this.stash.pending === 0) return 0;
    if (!this.vnetHdr) return this.stash.take(buf, off);
    vnet.clear(buf, off);
    return vnet.LEN + this.stash.take(buf, off + vnet.LEN);
  }

  /** Sum of words read by prefetch(), kept so the reads are not optimised away. */
  sink = 0;

  /**
   * Translate slots 0..count-1 of an arena in place and set each length to what is to be sent
   * (0 = drop). With a table larger than the CPU caches, a prefetch pass first issues the batch's
   * lookups together; below that the extra pass costs more than it saves (measured by
   * bench:core), so it is skipped.
   */
  processBatch(buf: Uint8Array, slotSize: number, lens: Int32Array, count: number): void {
    if (count > 1 && this.table.active >= PREFETCH_MIN_FLOWS) {
      this.prefetch(buf, slotSize, lens, count);
    }
    // One clock read per batch: every packet of the batch sees the same second.
    this.now = Math.floor(this.clock.now() / 1000);
    for (let i = 0; i < count; i++) {
      const v = this.processAt(buf, i * slotSize, lens[i]!);
      lens[i] = v === Verdict.Drop ? 0 : this.outLen;
    }
  }

  /**
   * First pass over a batch: read the index slot and flow record each packet will look up, so
   * their cache misses overlap instead of coming one per packet. Pure reads; no packet changes.
   */
  prefetch(buf: Uint8Array, slotSize: number, lens: Int32Array, count: number): void {
    const hdr = this.vnetHdr ? vnet.LEN : 0;
    const t = this.table;
    let acc = 0;
    for (let i = 0; i < count; i++) {
      const p = i * slotSize + hdr;
      if (lens[i]! < hdr + ipv4.MIN_HEADER_LEN + 4) continue;
      const hl = (buf[p]! & 0x0f) << 2;
      if (hl < ipv4.MIN_HEADER_LEN || lens[i]! < hdr + hl + 4) continue;
      const proto = buf[p + ipv4.PROTOCOL]!;
      if (proto !== ipv4.PROTO_TCP && proto !== ipv4.PROTO_UDP) continue;
      const src = ipv4.src(buf, p);
      const dst = ipv4.dst(buf, p);
      const sport = udp.srcPort(buf, p + hl);
      const dport = udp.dstPort(buf, p + hl);
      if (this.isInside(src)) acc += t.warm(true, proto, src, sport, dst, dport);
      else acc += t.warm(false, proto, dst, dport, src, sport);
    }
    this.sink = acc;
  }

  /** Translate one packet in place, at the clock's current time (processBatch reads it once). */
  process(buf: Uint8Array, off: number, len: number): Verdict {
    this.now = Math.floor(this.clock.now() / 1000);
    return this.processAt(buf, off, len);
  }

  /** One packet at `this.now`. */
  private processAt(buf: Uint8Array, off: number, len: number): Verdict {
    const v = this.translate(buf, off, len);
    if (this.relPending) this.releaseHeld();
    return v;
  }

  private translate(buf: Uint8Array, off: number, len: number): Verdict {
    this.outLen = len;
    let p = off;
    let plen = len;
    this.partial = false;
    this.segs = 1;
    if (this.vnetHdr) {
      if (len < vnet.LEN) return this.drop(DropReason.BadVnetHdr);
      const gso = vnet.gsoType(buf, off);
      if (gso !== vnet.GSO_NONE && gso !== vnet.GSO_TCPV4 && gso !== vnet.GSO_UDP_L4) {
        return this.drop(DropReason.BadVnetHdr);
      }
      this.partial = (vnet.flags(buf, off) & vnet.F_NEEDS_CSUM) !== 0;
      p = off + vnet.LEN;
      plen = len - vnet.LEN;
      if (gso !== vnet.GSO_NONE) {
        const size = vnet.gsoSize(buf, off);
        const hdr = vnet.gsoHdrLen(buf, off);
        if (size === 0 || hdr >= plen) return this.drop(DropReason.BadVnetHdr);
        this.segs = Math.ceil((plen - hdr) / size);
        this.wireBytes = plen + (this.segs - 1) * hdr;
      }
    }
    const hl = ipv4.check(buf, p, plen);
    if (hl < 0) {
      // An IPv6 packet (a router solicitation from the TUN's own stack) is not ours, not malformed.
      return this.drop(
        hl === ipv4.ERR_VERSION && buf[p]! >>> 4 === 6
          ? DropReason.NotNatTraffic
          : DropReason.MalformedIp,
      );
    }
    const tl = ipv4.totalLength(buf, p);
    if (this.segs === 1) this.wireBytes = tl;
    const src = ipv4.src(buf, p);
    const dst = ipv4.dst(buf, p);

    let v: Verdict;
    /** Where a forwarded packet goes: to an inside host (inbound, hairpinned) or outside. */
    let toInside: boolean;
    if (this.isInside(src)) {
      if (this.notAHost(src)) return this.drop(DropReason.Spoofed);
      if (this.isNat(dst) && !this.hairpinMayEnter(buf, p, hl, tl, dst)) {
        return this.drop(DropReason.Unsolicited);
      }
      this.stats.packetsInFromSource += this.segs;
      this.stats.bytesInFromSource += this.wireBytes;
      v = this.outbound(buf, p, hl, tl);
      toInside = v === Verdict.Forward && this.isNat(ipv4.dst(buf, p));
      if (toInside) {
        this.stats.hairpinPackets += this.segs;
        v = this.inbound(buf, p, hl, tl);
      }
    } else if (this.isNat(dst)) {
      if (this.isNat(src)) return this.drop(DropReason.Spoofed);
      this.stats.packetsInFromDestination += this.segs;
      this.stats.bytesInFromDestination += this.wireBytes;
      v = this.inbound(buf, p, hl, tl);
      toInside = true;
    } else {
      return this.drop(DropReason.NotNatTraffic);
    }
    if (v === Verdict.Forward) this.forwarded(buf, p, toInside, this.segs, this.wireBytes);
    else if (v === Verdict.Reply) this.stats.repliesGenerated++;
    return v;
  }

  /**
   * A packet (or a released fragment) leaves translated: the one place that counts what goes out
   * to the source or to the destination, and restores the TTL. The kernel decremented the TTL on
   * the way into the TUN and will again on the way out; one is given back so the gateway counts
   * as one hop (docs/architecture.md §Packet path).
   */
  private forwarded(
    buf: Uint8Array,
    p: number,
    toInside: boolean,
    segs: number,
    bytes: number,
  ): void {
    if (toInside) {
      this.stats.packetsOutToSource += segs;
      this.stats.bytesOutToSource += bytes;
    } else {
      this.stats.packetsOutToDestination += segs;
      this.stats.bytesOutToDestination += bytes;
    }
    if (this.restoreTtl) {
      const ttl = ipv4.ttl(buf, p);
      if (ttl < 255) ipv4.setTtl(buf, p, ttl + 1);
    }
  }

  private drop(reason: number): Verdict {
    this.stats.drops[reason]!++;
    this.lastDrop = reason;
    return Verdict.Drop;
  }

  // ---------------------------------------------------------------- outbound (inside -> outside)

  private outbound(buf: Uint8Array, p: number, hl: number, tl: number): Verdict {
    const proto = ipv4.protocol(buf, p);
    const ff = ipv4.flagsFrag(buf, p);
    if ((ff & ipv4.FRAG_OFFSET_MASK) !== 0) return this.fragmentVerdict(buf, p, proto, true);
    const l4 = p + hl;
    const l4len = tl - hl;
    if (proto === ipv4.PROTO_TCP || proto === ipv4.PROTO_UDP) {
      const tflags = this.checkPorts(buf, l4, l4len, proto, ff);
      if (tflags < 0) return this.drop(DropReason.MalformedL4);
      const src = ipv4.src(buf, p);
      const dst = ipv4.dst(buf, p);
      const sport = udp.srcPort(buf, l4);
      const dport = udp.dstPort(buf, l4);
      const t = this.table;
      let f = t.lookupInside(proto, src, sport, dst, dport, this.now);
      if (f < 0) {
        if (proto === ipv4.PROTO_TCP && (tflags & TCP_OPEN_MASK) !== tcp.SYN) {
          const v = this.tcpWithoutFlow(buf, p, hl, tl, tflags);
          if (v >= 0) return v as Verdict;
        }
        if (this.egress.size > 0) {
          const r = this.egress.decide(proto, src, dst, dport);
          if (r >= 0) return this.refuseEgress(buf, p, hl, tl, r);
        }
        f = t.createOutbound(proto, src, sport, dst, dport, this.now);
        if (f < 0) return this.refuse(buf, p, tl, REFUSAL_DROP[-f - 1]!);
      }
      // RFC 4787 REQ-6: outbound traffic refreshes; tcpUpdate also runs the state machine.
      if (proto === ipv4.PROTO_TCP) t.tcpUpdate(f, tflags, true, this.now);
      else t.touch(f, true, this.now);
      if ((t.flags(f) & FlowFlag.FORWARD) !== 0) {
        const fw = this.forwards.find(proto, t.oaddr(f), t.oport(f));
        if (fw >= 0) this.forwards.packetsOut[fw]! += this.segs;
      }
      return this.applyPorts(buf, p, l4, proto, ff, f, src, dst, true);
    }
    if (proto === ipv4.PROTO_ICMP) return this.icmpOutbound(buf, p, hl, tl, ff);
    return this.drop(DropReason.UnsupportedProtocol);
  }

  /**
   * An outbound TCP segment that matches no flow and is not a plain SYN. Mid-stream pick-up: only
   * a bare ACK (ACK set; SYN, FIN and RST clear; with or without data) may create a flow, so a
   * connection the table lost (a daemon restart) goes on. That is exactly what Linux picks up
   * with nf_conntrack_tcp_loose (the sNO column of tcp_conntracks: only the ACK row leads to
   * sES). Everything else is refused, counted, and never creates a mapping:
   *  - SYN-ACK: it answers a SYN that did not come through the NAT, so the inside host was reached
   *    by a route around it. Taking it as a new flow would let an outsider complete a handshake
   *    with a private service through the NAT address (issue 8): a one-way gateway opens nothing
   *    for an inbound connection;
   *  - RST: it closes what we do not know, and answering it could loop;
   *  - FIN: a closing connection gains nothing from a new mapping;
   *  - neither SYN nor ACK (null, FIN-only or PSH-only probes), or a SYN with FIN or RST: no
   *    connection sends it (Linux treats SYN|FIN as a SYN; here it opens nothing).
   * The aws preset answers every refused segment but an RST, and the bare ACK too, with an RST as
   * the AWS NAT Gateway does for a connection it does not know; the inside host then stops at once
   * instead of retransmitting into nothing. Returns a Verdict, or -1 to create the flow.
   */
  private tcpWithoutFlow(
    buf: Uint8Array,
    p: number,
    hl: number,
    tl: number,
    tflags: number,
  ): number {
    const open = tflags & TCP_OPEN_MASK;
    const pickUp = open === tcp.ACK;
    if (pickUp && !this.rstOnExpired) return -1;
    const reason = open === (tcp.SYN | tcp.ACK) ? DropReason.TcpSynAckNoFlow : DropReason.TcpNoFlow;
    if (!this.rstOnExpired || (tflags & tcp.RST) !== 0) return this.drop(reason);
    // aws: a bare ACK is answered like the rest (AWS resets what it does not know).
    this.stats.drops[reason]!++;
    this.lastDrop = reason;
    this.outLen = this.hdrLen() + writeRst(buf, p, hl, tl, this.nextIdent());
    this.clearVnet(buf, p);
    return Verdict.Reply;
  }

  private icmpOutbound(buf: Uint8Array, p: number, hl: number, tl: number, ff: number): Verdict {
    const ic = p + hl;
    const iclen = tl - hl;
    if (icmp.check(buf, ic, iclen) < 0) return this.drop(DropReason.MalformedL4);
    const type = icmp.type(buf, ic);
    if (type === icmp.ECHO_REQUEST) {
      const src = ipv4.src(buf, p);
      const dst = ipv4.dst(buf, p);
      const id = icmp.id(buf, ic);
      const t = this.table;
      let f = t.lookupInside(ipv4.PROTO_ICMP, src, id, dst, 0, this.now);
      if (f < 0) {
        if (this.egress.size > 0) {
          const r = this.egress.decide(ipv4.PROTO_ICMP, src, dst, 0);
          if (r >= 0) return this.refuseEgress(buf, p, hl, tl, r);
        }
        f = t.createOutbound(ipv4.PROTO_ICMP, src, id, dst, 0, this.now);
        if (f < 0) return this.refuse(buf, p, tl, REFUSAL_DROP[-f - 1]!);
      }
      t.touch(f, true, this.now);
      return this.applyEcho(buf, p, ic, tl, ff, f, src, dst, true);
    }
    if (icmp.isError(type)) return this.icmpErrorOutbound(buf, p, ic, iclen);
    return this.drop(DropReason.IcmpUnsupported);
  }

  /**
   * An inside host reports an error about a packet it received from outside (RFC 5508 REQ-5): the
   * embedded datagram went remote -> inside host, so its destination is restored to the mapping's
   * outside endpoint and the outer source becomes the NAT address. Errors never create or refresh
   * a flow (RFC 5508 REQ-6, RFC 7857 §3.5).
   */
  private icmpErrorOutbound(buf: Uint8Array, p: number, ic: number, iclen: number): Verdict {
    const e = this.checkError(buf, ic, iclen);
    if (e < 0) return Verdict.Drop;
    const f = this.embeddedFlow(buf, e, true);
    if (f < 0) return this.drop(DropReason.IcmpErrorNoFlow);
    const ehl = (buf[e]! & 0x0f) << 2;
    const oaddr = this.table.oaddr(f);
    rewriteEmbedded(buf, ic, iclen, e, ehl, false, oaddr, this.table.oport(f));
    ipv4.rewriteSrc(buf, p, oaddr);
    this.stats.icmpErrorsTranslated++;
    return Verdict.Forward;
  }

  // ---------------------------------------------------------------- inbound (outside -> inside)

  private inbound(buf: Uint8Array, p: number, hl: number, tl: number): Verdict {
    const proto = ipv4.protocol(buf, p);
    const ff = ipv4.flagsFrag(buf, p);
    if ((ff & ipv4.FRAG_OFFSET_MASK) !== 0) return this.fragmentVerdict(buf, p, proto, false);
    const l4 = p + hl;
    const l4len = tl - hl;
    if (proto === ipv4.PROTO_TCP || proto === ipv4.PROTO_UDP) {
      const tflags = this.checkPorts(buf, l4, l4len, proto, ff);
      if (tflags < 0) return this.drop(DropReason.MalformedL4);
      const src = ipv4.src(buf, p);
      const dst = ipv4.dst(buf, p);
      const sport = udp.srcPort(buf, l4);
      const dport = udp.dstPort(buf, l4);
      const t = this.table;
      let f = t.lookupOutside(proto, dst, dport, src, sport, this.now);
      const fw = f < 0 && this.forwards.size > 0 ? this.forwards.find(proto, dst, dport) : -1;
      if (fw >= 0) {
        // A static forward: only a SYN (or any UDP datagram) opens a flow to its inside host.
        if (proto === ipv4.PROTO_TCP && (!(tflags & tcp.SYN) || tflags & (tcp.RST | tcp.ACK))) {
          return this.drop(DropReason.Unsolicited);
        }
        const fo = this.forwards;
        f = t.createForward(
          proto,
          dst,
          dport,
          src,
          sport,
          fo.inside[fw]!,
          fo.insidePort[fw]!,
          this.now,
        );
        if (f < 0) {
          fo.refused[fw]!++;
          return this.drop(REFUSAL_DROP[-f - 1]!);
        }
        fo.flows[fw]!++;
      } else if (f < 0) {
        // Only a SYN may open a flow from outside, and only where the filtering mode lets an
        // existing mapping accept a new remote (RFC 4787 REQ-8, RFC 5382 REQ-3). Everything else
        // is dropped without an answer (RFC 5382 REQ-4).
        if (proto === ipv4.PROTO_TCP && (!(tflags & tcp.SYN) || tflags & (tcp.RST | tcp.ACK))) {
          return this.drop(
            t.hasMapping(proto, dst, dport) ? DropReason.Filtered : DropReason.Unsolicited,
          );
        }
        f = t.createInbound(proto, dst, dport, src, sport, this.now);
        if (f < 0) return this.drop(REFUSAL_DROP[-f - 1]!);
      }
      // RFC 4787 REQ-6a: inbound refresh is allowed, and Linux does it too.
      if (proto === ipv4.PROTO_TCP) t.tcpUpdate(f, tflags, false, this.now);
      else t.touch(f, false, this.now);
      if ((t.flags(f) & FlowFlag.FORWARD) !== 0) {
        const k = fw >= 0 ? fw : this.forwards.find(proto, dst, dport);
        if (k >= 0) this.forwards.packetsIn[k]! += this.segs;
      }
      return this.applyPorts(buf, p, l4, proto, ff, f, src, dst, false);
    }
    if (proto === ipv4.PROTO_ICMP) return this.icmpInbound(buf, p, hl, tl, ff);
    return this.drop(DropReason.UnsupportedProtocol);
  }

  private icmpInbound(buf: Uint8Array, p: number, hl: number, tl: number, ff: number): Verdict {
    const ic = p + hl;
    const iclen = tl - hl;
    if (icmp.check(buf, ic, iclen) < 0) return this.drop(DropReason.MalformedL4);
    const type = icmp.type(buf, ic);
    if (type === icmp.ECHO_REPLY) {
      const src = ipv4.src(buf, p);
      const dst = ipv4.dst(buf, p);
      const oid = icmp.id(buf, ic);
      const t = this.table;
      const f = t.lookupOutside(ipv4.PROTO_ICMP, dst, oid, src, 0, this.now);
      if (f < 0) return this.drop(DropReason.Unsolicited);
      t.touch(f, false, this.now);
      return this.applyEcho(buf, p, ic, tl, ff, f, src, dst, false);
    }
    if (icmp.isError(type)) return this.icmpErrorInbound(buf, p, ic, iclen);
    // Echo requests to the NAT address and other ICMP are not ours to answer (RFC 5508 REQ-11).
    return this.drop(
      type === icmp.ECHO_REQUEST ? DropReason.Unsolicited : DropReason.IcmpUnsupported,
    );
  }

  /**
   * An error from outside about a packet that left through us (RFC 5508 REQ-4): the embedded
   * datagram went NAT address -> remote; its source is restored to the inside endpoint and the outer
   * destination becomes that inside host. Type and code are kept.
   */
  private icmpErrorInbound(buf: Uint8Array, p: number, ic: number, iclen: number): Verdict {
    const e = this.checkError(buf, ic, iclen);
    if (e < 0) return Verdict.Drop;
    const f = this.embeddedFlow(buf, e, false);
    if (f < 0) return this.drop(DropReason.IcmpErrorNoFlow);
    const ehl = (buf[e]! & 0x0f) << 2;
    const iaddr = this.table.iaddr(f);
    rewriteEmbedded(buf, ic, iclen, e, ehl, true, iaddr, this.table.iport(f));
    ipv4.rewriteDst(buf, p, iaddr);
    this.stats.icmpErrorsTranslated++;
    return Verdict.Forward;
  }

  /**
   * The flow the datagram embedded at `e` belongs to, or -1. The quoted datagram travelled against
   * the error: an inside host's error (errorOutbound) quotes a packet that came in, remote ->
   * inside endpoint; an error from outside quotes one that went out, NAT endpoint -> remote. An
   * echo's identifier stands for both ports.
   */
  private embeddedFlow(buf: Uint8Array, e: number, errorOutbound: boolean): number {
    const eproto = buf[e + ipv4.PROTOCOL]!;
    const l4 = e + ((buf[e]! & 0x0f) << 2);
    let sport: number;
    let dport: number;
    if (eproto === ipv4.PROTO_ICMP) {
      sport = dport = icmp.id(buf, l4);
    } else if (eproto === ipv4.PROTO_TCP || eproto === ipv4.PROTO_UDP) {
      sport = udp.srcPort(buf, l4);
      dport = udp.dstPort(buf, l4);
    } else {
      return -1;
    }
    const esrc = ipv4.src(buf, e);
    const edst = ipv4.dst(buf, e);
    const echo = eproto === ipv4.PROTO_ICMP;
    return errorOutbound
      ? this.table.lookupInside(eproto, edst, dport, esrc, echo ? 0 : sport, this.now)
      : this.table.lookupOutside(eproto, esrc, sport, edst, echo ? 0 : dport, this.now);
  }

  /**
   * RFC 5508 REQ-3: drop an error whose ICMP checksum is wrong, whose embedded header is truncated
   * or whose embedded IP checksum is wrong. Returns the embedded header's offset, or -1 (counted).
   */
  private checkError(buf: Uint8Array, ic: number, iclen: number): number {
    if (fold(sum(buf, ic, iclen)) !== 0xffff) {
      this.drop(DropReason.IcmpBadChecksum);
      return -1;
    }
    const ehl = checkEmbedded(buf, ic, iclen);
    const e = ic + icmp.HEADER_LEN;
    if (ehl < 0 || !embeddedHeaderChecksumOk(buf, e, ehl)) {
      this.drop(DropReason.IcmpErrorBadEmbedded);
      return -1;
    }
    return e;
  }

  // ---------------------------------------------------------------- applying a mapping

  /**
   * Rewrite a TCP or UDP packet by its flow: outbound, the source becomes the mapping's outside
   * endpoint; inbound, the destination becomes the inside endpoint. The flow's precomputed deltas
   * fix both checksums (negated inbound); a first fragment records the datagram for the rest.
   */
  private applyPorts(
    buf: Uint8Array,
    p: number,
    l4: number,
    proto: number,
    ff: number,
    f: number,
    src: number,
    dst: number,
    outbound: boolean,
  ): Verdict {
    const t = this.table;
    const addr = outbound ? t.oaddr(f) : t.iaddr(f);
    const ipd = outbound ? t.ipDelta(f) : negate(t.ipDelta(f));
    const l4d = outbound ? t.l4Delta(f) : negate(t.l4Delta(f));
    ipv4.writeU32(buf, p + (outbound ? ipv4.SRC : ipv4.DST), addr);
    ipv4.setChecksumField(buf, p, adjust(ipv4.checksumField(buf, p), ipd));
    if (outbound) udp.setSrcPort(buf, l4, t.oport(f));
    else udp.setDstPort(buf, l4, t.iport(f));
    this.fixL4(buf, l4, proto, ipd, l4d);
    if (ff & ipv4.FLAG_MF) this.firstFragment(buf, p, proto, src, dst, addr, !outbound);
    if (outbound) t.addOut(f, this.segs, this.wireBytes);
    else t.addIn(f, this.segs, this.wireBytes);
    return Verdict.Forward;
  }

  /**
   * Rewrite an ICMP echo request (outbound) or reply (inbound) by its flow: the address as for
   * ports, and the identifier, which stands for the port. The ICMP checksum has no pseudo-header:
   * only the identifier changes it.
   */
  private applyEcho(
    buf: Uint8Array,
    p: number,
    ic: number,
    tl: number,
    ff: number,
    f: number,
    src: number,
    dst: number,
    outbound: boolean,
  ): Verdict {
    const t = this.table;
    const addr = outbound ? t.oaddr(f) : t.iaddr(f);
    const from = icmp.id(buf, ic);
    const to = outbound ? t.oport(f) : t.iport(f);
    const ipd = outbound ? t.ipDelta(f) : negate(t.ipDelta(f));
    ipv4.writeU32(buf, p + (outbound ? ipv4.SRC : ipv4.DST), addr);
    ipv4.setChecksumField(buf, p, adjust(ipv4.checksumField(buf, p), ipd));
    icmp.setId(buf, ic, to);
    icmp.setChecksumField(buf, ic, adjust(icmp.checksumField(buf, ic), delta16(from, to)));
    if (ff & ipv4.FLAG_MF) this.firstFragment(buf, p, ipv4.PROTO_ICMP, src, dst, addr, !outbound);
    if (outbound) t.addOut(f, 1, tl);
    else t.addIn(f, 1, tl);
    return Verdict.Forward;
  }

  // ---------------------------------------------------------------- helpers

  /**
   * Validate the TCP or UDP header at l4 (l4len bytes of IP payload). Returns the TCP flags (0 for
   * UDP), or -1 when the header is malformed.
   */
  private checkPorts(
    buf: Uint8Array,
    l4: number,
    l4len: number,
    proto: number,
    ff: number,
  ): number {
    if (proto === ipv4.PROTO_TCP) return tcp.check(buf, l4, l4len) < 0 ? -1 : tcp.flags(buf, l4);
    // A GSO super-packet's or a first fragment's UDP length covers more than these bytes.
    const whole = this.segs > 1 || (ff & ipv4.FLAG_MF) !== 0;
    return udp.check(buf, l4, l4len, whole) < 0 ? -1 : 0;
  }

  /** Transport checksum for an address+port change (TCP/UDP). */
  private fixL4(buf: Uint8Array, l4: number, proto: number, ipd: number, l4d: number): void {
    const at = l4 + (proto === ipv4.PROTO_TCP ? tcp.CHECKSUM : udp.CHECKSUM);
    const c = ipv4.readU16(buf, at);
    if (this.partial) {
      // NEEDS_CSUM: the field is the pseudo-header sum; ports are not part of it.
      ipv4.writeU16(buf, at, adjustPartial(c, ipd));
      return;
    }
    if (proto === ipv4.PROTO_UDP) {
      if (c === 0) return; // RFC 768: no checksum, and it stays that way.
      const n = adjust(c, l4d);
      ipv4.writeU16(buf, at, n === 0 ? 0xffff : n);
      return;
    }
    ipv4.writeU16(buf, at, adjust(c, l4d));
  }

  private firstFragment(
    buf: Uint8Array,
    p: number,
    proto: number,
    src: number,
    dst: number,
    newAddr: number,
    inbound: boolean,
  ): void {
    const oldId = ipv4.id(buf, p);
    const s = this.frags.put(src, dst, proto, oldId, newAddr, inbound, this.now);
    this.setId(buf, p, oldId, this.frags.newId[s]!);
    // Fragments held for this datagram are released when process() ends (a hairpinned first
    // fragment comes here twice, out then back in; its fragments were held under the first key).
    if (this.relPending || this.stash.held === 0) return;
    this.expireHeld(this.now); // a fragment held too long is not released late
    if (this.stash.has(src, dst, proto, oldId, !inbound)) {
      this.relPending = true;
      this.relSrc = src;
      this.relDst = dst;
      this.relProto = proto;
      this.relId = oldId;
      this.relOutbound = !inbound;
    }
  }

  /** A later fragment of the packet being processed: its verdict, the drop counted. */
  private fragmentVerdict(buf: Uint8Array, p: number, proto: number, outbound: boolean): Verdict {
    const r = this.laterFragment(buf, p, proto, outbound);
    if (r === FRAGMENT_FORWARD) return Verdict.Forward;
    if (r === FRAGMENT_HELD) {
      this.lastDrop = -1;
      return Verdict.Drop;
    }
    return this.drop(r);
  }

  /**
   * A fragment after the first: translate it as its first fragment was. Without state it is held
   * for its first fragment (RFC 4787 REQ-14), unless it is being released (then it is dropped).
   * Returns FRAGMENT_FORWARD, FRAGMENT_HELD or the DropReason, uncounted: it serves both the
   * packet being processed and the fragments released from the stash, and only the caller knows
   * which (a released fragment's drop is not the current packet's).
   */
  private laterFragment(buf: Uint8Array, p: number, proto: number, outbound: boolean): number {
    const src = ipv4.src(buf, p);
    const dst = ipv4.dst(buf, p);
    const oldId = ipv4.id(buf, p);
    const s = this.frags.get(src, dst, proto, oldId, this.now);
    if (s < 0) {
      if (this.releasing) return DropReason.FragmentNoState;
      return this.hold(buf, p, src, dst, proto, oldId, outbound);
    }
    const addr = this.frags.newAddr[s]!;
    if (outbound) ipv4.rewriteSrc(buf, p, addr);
    else ipv4.rewriteDst(buf, p, addr);
    this.setId(buf, p, oldId, this.frags.newId[s]!);
    if (outbound && this.isNat(dst)) {
      // Hairpinned fragment: its first fragment was recorded again on the way back in.
      const s2 = this.frags.get(addr, dst, proto, this.frags.newId[s]!, this.now);
      if (s2 < 0) return DropReason.FragmentNoState;
      ipv4.rewriteDst(buf, p, this.frags.newAddr[s2]!);
    }
    return FRAGMENT_FORWARD;
  }

  /** Copy an out-of-order fragment into the stash: FRAGMENT_HELD, or the drop when it is full. */
  private hold(
    buf: Uint8Array,
    p: number,
    src: number,
    dst: number,
    proto: number,
    ipId: number,
    outbound: boolean,
  ): number {
    this.expireHeld(this.now);
    const tl = ipv4.totalLength(buf, p);
    if (!this.stash.hold(buf, p, tl, src, dst, proto, ipId, outbound, this.now)) {
      return DropReason.FragmentStashFull;
    }
    this.stats.fragmentsHeld++;
    return FRAGMENT_HELD;
  }

  /** Held fragments whose first fragment did not come in time are dropped (FragmentNoState). */
  private expireHeld(now: number): void {
    const n = this.stash.expire(now);
    if (n > 0) this.stats.drops[DropReason.FragmentNoState]! += n;
  }

  /**
   * The first fragment of a datagram with held fragments has passed: translate those in place in
   * the stash (as laterFragment does for fragments in order) and queue them for takeOutput().
   * It uses none of the current packet's per-packet state: each released fragment is one
   * unsegmented packet, counted here, and its drop (if any) is not the current packet's.
   */
  private releaseHeld(): void {
    this.relPending = false;
    const st = this.stash;
    const a = st.arena;
    const outbound = this.relOutbound;
    this.releasing = true;
    let e = st.next(0, this.relSrc, this.relDst, this.relProto, this.relId, outbound);
    while (e >= 0) {
      const p = e * FRAGMENT_HOLD_MAX_BYTES;
      const r = this.laterFragment(a, p, this.relProto, outbound);
      if (r === FRAGMENT_FORWARD) {
        this.forwarded(a, p, !outbound, 1, st.len[e]!);
        st.markReady(e);
        this.stats.fragmentsReleased++;
      } else {
        this.stats.drops[r]!++;
        st.drop(e);
      }
      e = st.next(e + 1, this.relSrc, this.relDst, this.relProto, this.relId, outbound);
    }
    this.releasing = false;
  }

  private setId(buf: Uint8Array, p: number, oldId: number, newId: number): void {
    if (oldId === newId) return;
    ipv4.writeU16(buf, p + ipv4.ID, newId);
    ipv4.setChecksumField(buf, p, adjust(ipv4.checksumField(buf, p), delta16(oldId, newId)));
  }

  /**
   * No flow could be made for an outbound packet (table full, ports exhausted, over quota): count
   * the drop by reason; unless policy says otherwise (RFC 5508 REQ-9) the sender is told
   * with ICMP 3/13 (RFC 5508 REQ-8, RFC 6888 REQ-11b) — but never about an ICMP error or a
   * non-first fragment (RFC 1812 §4.3.2.7).
   */
  private refuse(buf: Uint8Array, p: number, tl: number, reason: number): Verdict {
    this.stats.drops[reason]!++;
    this.lastDrop = reason;
    if (!this.icmpProhibited) return Verdict.Drop;
    if (ipv4.protocol(buf, p) === ipv4.PROTO_ICMP) {
      const t = icmp.type(buf, p + ipv4.headerLength(buf, p));
      if (icmp.isError(t)) return Verdict.Drop;
    }
    return this.adminProhibited(buf, p, tl);
  }

  /** Answer the packet at p with ICMP 3/13 from the NAT address its source leaves by. */
  private adminProhibited(buf: Uint8Array, p: number, tl: number): Verdict {
    const from = this.table.natAddressFor(ipv4.src(buf, p));
    const n = writeIcmpError(
      buf,
      p,
      tl,
      icmp.DEST_UNREACH,
      icmp.CODE_ADMIN_PROHIBITED,
      0,
      from,
      this.nextIdent(),
    );
    this.clearVnet(buf, p);
    this.outLen = this.hdrLen() + n;
    return Verdict.Reply;
  }

  /**
   * An outbound packet whose new flow egress rule `r` denies: counted (egress_denied, and on the
   * rule), then answered as the rule says: ICMP 3/13, a TCP RST (TCP only; other protocols get
   * ICMP 3/13), or nothing.
   */
  private refuseEgress(buf: Uint8Array, p: number, hl: number, tl: number, r: number): Verdict {
    this.stats.drops[DropReason.EgressDenied]!++;
    this.lastDrop = DropReason.EgressDenied;
    const answer = this.egress.answer(r);
    if (answer === EgressAnswer.Silent) return Verdict.Drop;
    if (answer === EgressAnswer.Rst && ipv4.protocol(buf, p) === ipv4.PROTO_TCP) {
      this.outLen = this.hdrLen() + writeRst(buf, p, hl, tl, this.nextIdent());
      this.clearVnet(buf, p);
      return Verdict.Reply;
    }
    return this.adminProhibited(buf, p, tl);
  }

  /**
   * New egress rules (SIGHUP). Flows the new rules still allow go on untouched; every live flow
   * they deny is ended (removed; its next packet meets the new rules as a new flow would) and
   * counted on the denying rule. Flows opened through a static forward are inbound and not
   * subject to egress rules. Control plane: walks the table once. Returns the flows ended.
   */
  setEgress(policy: EgressPolicy): number {
    this.egress = policy;
    if (policy.size === 0) return 0;
    const t = this.table;
    const now = Math.floor(this.clock.now() / 1000);
    let ended = 0;
    t.forEach((f) => {
      if ((t.flags(f) & FlowFlag.FORWARD) !== 0) return;
      const proto = t.proto(f);
      const r = policy.denies(
        proto,
        t.iaddr(f),
        t.raddr(f),
        proto === ipv4.PROTO_ICMP ? 0 : t.rport(f),
      );
      if (r < 0) return;
      policy.ended[r]!++;
      t.remove(f, now);
      ended++;
    });
    this.stats.egressFlowsEnded += ended;
    return ended;
  }

  private nextIdent(): number {
    this.ident = (this.ident + 1) & 0xffff;
    return this.ident;
  }

  /** Bytes of virtio header in front of the IP packet. */
  private hdrLen(): number {
    return this.vnetHdr ? vnet.LEN : 0;
  }

  /** A generated packet is complete and not GSO: give it an all-zero virtio header. */
  private clearVnet(buf: Uint8Array, p: number): void {
    if (this.vnetHdr) vnet.clear(buf, p - vnet.LEN);
  }
}

/** Room takeOutput() needs at its offset: the largest held fragment and a virtio_net_hdr. */
export const FRAGMENT_OUTPUT_MAX_BYTES = FRAGMENT_HOLD_MAX_BYTES + vnet.LEN;
