import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { DataLoop } from "../../../src/datapath/loop.js";
import { MemoryDevice } from "../../../src/io/memory-device.js";
import {
  FRAGMENT_HOLD_MAX_BYTES,
  FRAGMENT_HOLD_SECONDS,
  STASH_ENTRIES,
  STASH_MAX_BYTES,
  STASH_PER_DATAGRAM,
} from "../../../src/nat/fragments.js";
import { DropReason } from "../../../src/nat/stats.js";
import { FRAGMENT_OUTPUT_MAX_BYTES, type Translator } from "../../../src/nat/translate.js";
import { checksumsOk } from "../../helpers/checker.js";
import { NAT, NatHarness, P1, P2, SRV, SRV2, Verdict } from "../../helpers/nat.js";
import { build, internetChecksum, type PktSpec, parse, VNET_LEN } from "../../helpers/packet.js";

/** Split an unfragmented IPv4 packet (20-byte header) into fragments of `size` payload bytes. */
function fragment(pkt: Uint8Array, size: number): Uint8Array[] {
  if (size % 8 !== 0) throw new Error("fragment size must be a multiple of 8");
  const body = pkt.slice(20);
  const out: Uint8Array[] = [];
  for (let o = 0; o < body.length; o += size) {
    const part = body.slice(o, o + size);
    const f = new Uint8Array(20 + part.length);
    f.set(pkt.subarray(0, 20));
    f.set(part, 20);
    const v = new DataView(f.buffer);
    v.setUint16(2, f.length);
    const more = o + size < body.length;
    v.setUint16(6, (more ? 0x2000 : 0) | (o >>> 3));
    v.setUint16(10, 0);
    v.setUint16(10, internetChecksum(f, 0, 20));
    out.push(f);
  }
  return out;
}

/**
 * Put fragments (no virtio header) back together, checking that they agree on the datagram's
 * identity and cover it exactly once, and return the whole packet with a fresh header checksum.
 */
function reassemble(frags: Uint8Array[]): Uint8Array {
  const info = frags.map((f) => ({ f, p: parse(f) }));
  const p0 = info[0]!.p;
  for (const { p } of info) {
    if (p.src !== p0.src || p.dst !== p0.dst || p.ipId !== p0.ipId || p.proto !== p0.proto) {
      throw new Error(`fragment of another datagram: ${JSON.stringify([p0, p])}`);
    }
  }
  info.sort((a, b) => a.p.fragOffset - b.p.fragOffset);
  let at = 0;
  const parts: Uint8Array[] = [];
  for (const { f, p } of info) {
    if (p.fragOffset !== at) throw new Error(`gap or overlap at ${at} (next ${p.fragOffset})`);
    const payload = f.slice(p.ihl, p.totalLength);
    parts.push(payload);
    at += payload.length;
  }
  if (info[info.length - 1]!.p.mf) throw new Error("the last fragment has MF set");
  const whole = new Uint8Array(20 + at);
  whole.set(info[0]!.f.subarray(0, 20));
  let o = 20;
  for (const part of parts) {
    whole.set(part, o);
    o += part.length;
  }
  const v = new DataView(whole.buffer);
  v.setUint16(2, whole.length);
  v.setUint16(6, 0);
  v.setUint16(10, 0);
  v.setUint16(10, internetChecksum(whole, 0, 20));
  return whole;
}

/** Drain the translator's released fragments. */
function takeAll(nat: Translator): Uint8Array[] {
  const buf = new Uint8Array(FRAGMENT_OUTPUT_MAX_BYTES);
  const out: Uint8Array[] = [];
  for (let n = nat.takeOutput(buf, 0); n > 0; n = nat.takeOutput(buf, 0)) out.push(buf.slice(0, n));
  return out;
}

const payload3000 = (seed: number) =>
  Uint8Array.from({ length: 3000 }, (_, i) => (i * seed) & 0xff);

function orphan(spec: Partial<PktSpec> & { ipId: number }): Uint8Array {
  return build({
    src: P1,
    dst: SRV,
    proto: 17,
    fragOffset: 1480,
    payload: new Uint8Array(64),
    ...spec,
  });
}

t.test(
  "a datagram whose fragments arrive reversed and shuffled comes out whole in both directions",
  async (t) => {
    const h = new NatHarness();
    const out = build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 40000,
      dport: 9999,
      ipId: 4242,
      payload: payload3000(7),
    });
    const f = fragment(out, 1000);
    t.equal(f.length, 4, "3008 bytes of UDP in 1000-byte fragments");
    for (const i of [3, 1, 2]) {
      const r = h.processBytes(f[i]!);
      t.equal(r.verdict, Verdict.Drop, `fragment ${i} is not sent yet`);
      t.equal(r.dropReason, -1, `fragment ${i} is held, not dropped`);
    }
    t.equal(h.nat.pendingOutput(), 0, "nothing is released before the first fragment");
    t.equal(h.stats.fragmentsHeld, 3);
    const first = h.processBytes(f[0]!);
    t.equal(first.verdict, Verdict.Forward, "the first fragment is forwarded");
    t.equal(first.pkt!.src, NAT);
    t.equal(first.pkt!.sport, 40000, "port preserved");
    t.not(first.pkt!.ipId, 4242, "a fresh IP ID (RFC 6864 / RFC 7857 §3.6)");
    t.equal(h.nat.pendingOutput(), 3, "the three held fragments are queued");
    const rest = takeAll(h.nat);
    t.equal(rest.length, 3);
    t.equal(h.nat.pendingOutput(), 0, "taken once");
    for (const r of rest) {
      const p = parse(r);
      t.equal(p.src, NAT, `offset ${p.fragOffset}: from the NAT address`);
      t.equal(p.dst, SRV);
      t.equal(p.ipId, first.pkt!.ipId, `offset ${p.fragOffset}: the first fragment's new ID`);
      const c = checksumsOk(r, 0, { vnet: false });
      t.ok(c.ok, `offset ${p.fragOffset}: IP header checksum ${c.why ?? "ok"}`);
    }
    const whole = reassemble([first.out, ...rest]);
    const wc = checksumsOk(whole);
    t.ok(wc.ok, `the reassembled datagram's UDP checksum holds (${wc.why ?? "ok"})`);
    const wp = parse(whole);
    t.same([wp.sport, wp.dport], [40000, 9999]);
    t.same(wp.payload, payload3000(7), "payload intact");
    t.equal(h.stats.fragmentsReleased, 3);

    // The reply, fragmented and shuffled on its way in.
    const back = build({
      src: SRV,
      dst: NAT,
      proto: "udp",
      sport: 9999,
      dport: 40000,
      ipId: 777,
      payload: payload3000(11),
    });
    const g = fragment(back, 1000);
    for (const i of [2, 3, 1]) t.equal(h.processBytes(g[i]!).dropReason, -1, `reply ${i} held`);
    const gfirst = h.processBytes(g[0]!);
    t.equal(gfirst.verdict, Verdict.Forward);
    t.equal(gfirst.pkt!.dst, P1);
    const grest = takeAll(h.nat);
    t.equal(grest.length, 3, "the reply's held fragments are released");
    for (const r of grest) {
      const p = parse(r);
      t.equal(p.dst, P1, `reply offset ${p.fragOffset}: to the inside host`);
      t.equal(p.ipId, 777, "inbound fragments keep their ID");
      t.ok(checksumsOk(r, 0, { vnet: false }).ok, `reply offset ${p.fragOffset}: IP checksum`);
    }
    const gwhole = reassemble([gfirst.out, ...grest]);
    t.ok(checksumsOk(gwhole).ok, "the reassembled reply's UDP checksum holds");
    t.same(parse(gwhole).payload, payload3000(11));
    t.equal(h.stats.fragmentsHeld, 6);
    t.equal(h.stats.fragmentsReleased, 6);
    t.equal(h.stats.dropTotal(), 0, "nothing counted as dropped");
    t.equal(h.stats.packetsOutToSource, 4, "the reply's four fragments went to the inside host");
    t.equal(h.stats.packetsOutToDestination, 4);
  },
);

t.test(
  "a hairpinned datagram's early fragments are released to the other inside host",
  async (t) => {
    const h = new NatHarness({ filtering: "endpoint-independent" });
    // P2's mapping, which P1 reaches through the NAT address (RFC 4787 REQ-9).
    const m = h.send({ src: P2, dst: SRV, proto: "udp", sport: 9000, dport: 1 });
    const f = fragment(
      build({
        src: P1,
        dst: NAT,
        proto: "udp",
        sport: 5000,
        dport: m.pkt!.sport!,
        ipId: 99,
        payload: payload3000(3),
      }),
      1000,
    );
    for (const i of [3, 2, 1]) t.equal(h.processBytes(f[i]!).dropReason, -1);
    const first = h.processBytes(f[0]!);
    t.equal(first.verdict, Verdict.Forward);
    t.same([first.pkt!.src, first.pkt!.dst], [NAT, P2]);
    const rest = takeAll(h.nat);
    t.equal(rest.length, 3);
    for (const r of rest) {
      const p = parse(r);
      t.same([p.src, p.dst, p.ipId], [NAT, P2, first.pkt!.ipId], `offset ${p.fragOffset}`);
    }
    t.ok(checksumsOk(reassemble([first.out, ...rest])).ok, "the reassembled datagram checks");
  },
);

t.test("with a virtio header, released fragments get an all-zero one in front", async (t) => {
  const h = new NatHarness({ vnetHdr: true });
  const f = fragment(
    build({ src: P1, dst: SRV, proto: "udp", sport: 1, dport: 2, payload: new Uint8Array(100) }),
    56,
  );
  const withVnet = (b: Uint8Array) => {
    const v = new Uint8Array(VNET_LEN + b.length);
    v.set(b, VNET_LEN);
    return v;
  };
  t.equal(h.processBytes(withVnet(f[1]!)).dropReason, -1, "held");
  t.equal(h.processBytes(withVnet(f[0]!)).verdict, Verdict.Forward);
  const buf = new Uint8Array(FRAGMENT_OUTPUT_MAX_BYTES).fill(0xee);
  const n = h.nat.takeOutput(buf, 0);
  t.equal(n, VNET_LEN + f[1]!.length, "header and fragment");
  t.same([...buf.subarray(0, VNET_LEN)], new Array(VNET_LEN).fill(0), "an all-zero header");
  t.equal(parse(buf.slice(0, n)).src, NAT);
  t.equal(h.nat.takeOutput(buf, 0), 0, "then nothing");
});

t.test("held fragments expire after a few seconds and are counted as dropped", async (t) => {
  const h = new NatHarness();
  t.equal(h.processBytes(orphan({ ipId: 1 })).dropReason, -1);
  h.wait(FRAGMENT_HOLD_SECONDS - 1);
  h.nat.sweep(64);
  t.equal(h.stats.drops[DropReason.FragmentNoState], 0, "still held just before the bound");
  h.wait(1);
  h.nat.sweep(64);
  t.equal(h.stats.drops[DropReason.FragmentNoState], 1, "expired by the sweep");

  // One held now, its first fragment comes too late: nothing is released.
  const f = fragment(
    build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 7,
      dport: 7,
      ipId: 2,
      payload: "x".repeat(40),
    }),
    24,
  );
  t.equal(h.processBytes(f[1]!).dropReason, -1);
  h.wait(FRAGMENT_HOLD_SECONDS);
  t.equal(h.processBytes(f[0]!).verdict, Verdict.Forward, "the first fragment still passes");
  t.equal(h.nat.pendingOutput(), 0, "the expired fragment is not released");
  t.equal(h.stats.drops[DropReason.FragmentNoState], 2);
  t.equal(h.stats.fragmentsReleased, 0);

  // Within the bound it is.
  const g = fragment(
    build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 7,
      dport: 7,
      ipId: 3,
      payload: "y".repeat(40),
    }),
    24,
  );
  h.processBytes(g[1]!);
  h.wait(FRAGMENT_HOLD_SECONDS - 1);
  h.processBytes(g[0]!);
  t.equal(h.nat.pendingOutput(), 1, "released within the bound");
});

t.test("a flood of orphan fragments fills the stash only up to its bounds", async (t) => {
  const h = new NatHarness();
  const flood = 1000;
  for (let i = 0; i < flood; i++) {
    // Half from inside, half from outside to the NAT address, each a different datagram.
    const spec = i % 2 ? { ipId: i } : { src: SRV2, dst: NAT, ipId: i };
    h.processBytes(orphan(spec));
  }
  t.equal(h.stats.fragmentsHeld, STASH_ENTRIES, "held up to the entry bound");
  t.equal(h.stats.drops[DropReason.FragmentStashFull], flood - STASH_ENTRIES, "the rest counted");
  t.equal(h.stats.drops[DropReason.FragmentNoState], 0);

  // Unfragmented traffic and in-order fragments are unaffected.
  const u = h.send({ src: P1, dst: SRV, proto: "udp", sport: 5353, dport: 53, payload: "q" });
  t.equal(u.verdict, Verdict.Forward, "a new UDP flow goes out");
  const r = h.send({ src: SRV, dst: NAT, proto: "udp", sport: 53, dport: 5353, payload: "a" });
  t.equal(r.pkt?.dst, P1, "and its reply comes back");
  const f = fragment(
    build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 8,
      dport: 8,
      ipId: 5000,
      payload: "z".repeat(40),
    }),
    24,
  );
  t.equal(h.processBytes(f[0]!).verdict, Verdict.Forward);
  t.equal(h.processBytes(f[1]!).verdict, Verdict.Forward, "in-order fragments need no stash");

  // Once the flood has expired, fragments are held again.
  h.wait(FRAGMENT_HOLD_SECONDS);
  const g = fragment(
    build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 8,
      dport: 8,
      ipId: 5001,
      payload: "w".repeat(40),
    }),
    24,
  );
  t.equal(h.processBytes(g[1]!).dropReason, -1, "held after the flood expired");
  t.equal(h.stats.drops[DropReason.FragmentNoState], STASH_ENTRIES, "the flood expired, counted");
  h.processBytes(g[0]!);
  t.equal(takeAll(h.nat).length, 1);
});

t.test("one datagram cannot take more than its share of the stash", async (t) => {
  const h = new NatHarness();
  for (let i = 0; i < STASH_PER_DATAGRAM + 4; i++) {
    h.processBytes(orphan({ ipId: 9, fragOffset: 8 * (i + 1), payload: new Uint8Array(8) }));
  }
  t.equal(h.stats.fragmentsHeld, STASH_PER_DATAGRAM);
  t.equal(h.stats.drops[DropReason.FragmentStashFull], 4);
  t.equal(h.processBytes(orphan({ ipId: 10 })).dropReason, -1, "another datagram is still held");
});

t.test("the stash holds at most its byte bound and no fragment over the jumbo size", async (t) => {
  const h = new NatHarness();
  const size = 8000;
  const fits = Math.floor(STASH_MAX_BYTES / (20 + size));
  t.ok(fits < STASH_ENTRIES, "the byte bound binds before the entry bound");
  for (let i = 0; i < fits + 5; i++) {
    h.processBytes(orphan({ ipId: 100 + i, payload: new Uint8Array(size) }));
  }
  t.equal(h.stats.fragmentsHeld, fits);
  t.equal(h.stats.drops[DropReason.FragmentStashFull], 5);
  const h2 = new NatHarness();
  const big = h2.processBytes(
    orphan({ ipId: 1, payload: new Uint8Array(FRAGMENT_HOLD_MAX_BYTES) }),
  );
  t.equal(big.dropReason, DropReason.FragmentStashFull, "larger than an entry");
});

t.test("the data loop writes released fragments after the batch that freed them", async (t) => {
  const clock = new ManualClock();
  const h = new NatHarness();
  const dev = new MemoryDevice({ slots: 2 });
  const loop = new DataLoop(dev, h.nat, clock);
  loop.start();
  t.teardown(() => loop.stop());
  const f = fragment(
    build({
      src: P1,
      dst: SRV,
      proto: "udp",
      sport: 3,
      dport: 4,
      ipId: 6,
      payload: payload3000(5),
    }),
    1000,
  );
  for (const i of [3, 2, 1]) dev.inject(f[i]!);
  dev.flush();
  t.equal(dev.sent.length, 0, "the held fragments are not sent");
  const callsBefore = dev.writeCalls;
  dev.inject(f[0]!);
  dev.inject(build({ src: P1, dst: SRV, proto: "udp", sport: 9, dport: 9, payload: "other" }));
  dev.flush();
  t.equal(dev.sent.length, 5, "the batch's two packets, then the three released fragments");
  t.equal(parse(dev.sent[0]!).fragOffset, 0, "the batch goes first");
  t.equal(parse(dev.sent[1]!).sport, 9);
  t.equal(
    dev.writeCalls - callsBefore,
    3,
    "one write for the batch, two for 3 fragments in 2 slots",
  );
  const whole = reassemble([dev.sent[0]!, ...dev.sent.slice(2)]);
  t.ok(checksumsOk(whole).ok, "the datagram reassembles with a valid UDP checksum");
  t.same(parse(whole).payload, payload3000(5));
  t.equal(loop.loopStats.written, 5);
  t.equal(h.nat.pendingOutput(), 0, "drained");
});
