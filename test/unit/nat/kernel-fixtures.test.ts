/**
 * The core checked against packets the Linux kernel produced (test/fixtures, captured by
 * test/fixtures/capture.sh; see its README for the lab). Kernel ICMP errors are translated both
 * ways and every checksum is recomputed in full, including the embedded TCP checksum where the
 * kernel quoted the whole segment; the packets the core originates (ICMP 3/13, RST) are compared
 * byte for byte with the kernel's own.
 */
import t from "tap";
import { writeIcmpError, writeRst } from "../../../src/nat/icmp-error.js";
import { checksumsOk, expectPacket } from "../../helpers/checker.js";
import { NatHarness, Verdict } from "../../helpers/nat.js";
import { internetChecksum, ip, type Parsed, parse, pseudoSum } from "../../helpers/packet.js";
import { fixturePath, readPcap } from "../../helpers/pcap.js";

const CLIENT = "10.99.1.2";
const HIDDEN = "10.200.0.5";

function records(name: string): Uint8Array[] {
  return readPcap(fixturePath(`${name}.pcap`)).records.map((r) => r.ip);
}

/** The kernel's error and the packet it is about, from a capture on the client. */
function errorCase(name: string): { offending: Parsed; error: Uint8Array } {
  const pkts = records(name);
  const offending = pkts.find((p) => parse(p).src === CLIENT)!;
  const error = pkts.find((p) => parse(p).dst === CLIENT && parse(p).proto === 1)!;
  return { offending: parse(offending), error };
}

/**
 * Full recomputation of an embedded TCP or UDP checksum when the kernel quoted the whole
 * datagram; true when there is nothing complete to recompute.
 */
function embeddedL4ChecksumOk(icmpMessage: Uint8Array): boolean {
  const e = icmpMessage.subarray(8);
  const hl = (e[0]! & 0x0f) * 4;
  const proto = e[9]!;
  const total = (e[2]! << 8) | e[3]!;
  if (total > e.length || (proto !== 6 && proto !== 17)) return true;
  const seg = e.slice(hl, total);
  if (proto === 17 && seg[6] === 0 && seg[7] === 0) return true; // no UDP checksum
  const src = ((e[12]! << 24) | (e[13]! << 16) | (e[14]! << 8) | e[15]!) >>> 0;
  const dst = ((e[16]! << 24) | (e[17]! << 16) | (e[18]! << 8) | e[19]!) >>> 0;
  return internetChecksum(seg, 0, seg.length, pseudoSum(src, dst, proto, seg.length)) === 0;
}

/** The ICMP payload past the embedded ports, with the embedded L4 checksum field blanked. */
function quotedRest(pkt: Uint8Array): Uint8Array {
  const e = pkt.slice(28);
  const hl = (e[0]! & 0x0f) * 4;
  const at = e[9] === 6 ? hl + 16 : e[9] === 17 ? hl + 6 : e[9] === 1 ? hl + 2 : -1;
  if (at >= 0 && at + 2 <= e.length) e.fill(0, at, at + 2);
  return e.subarray(hl + 4);
}

const ERRORS = [
  "udp-port-unreachable",
  "frag-needed-icmp",
  "frag-needed-udp",
  "time-exceeded-udp",
  "time-exceeded-tcp",
  "admin-prohibited-tcp",
];

for (const name of ERRORS) {
  t.test(
    `the kernel's ${name} error is translated inbound with every checksum right`,
    async (t) => {
      const { offending: o, error } = errorCase(name);
      // Play the NAT with the client's address as the NAT address: a hidden inside host opens the
      // same flow, keeps its port or echo id, and the kernel's error must come back to it.
      const h = new NatHarness({
        natAddresses: [ip(CLIENT)],
        inside: [{ addr: ip("10.200.0.0"), len: 24 }],
      });
      const opened =
        o.proto === 1
          ? h.send({ src: HIDDEN, dst: o.dst, proto: "icmp", icmpType: 8, icmpId: o.icmpId! })
          : h.send({
              src: HIDDEN,
              dst: o.dst,
              proto: o.proto === 6 ? "tcp" : "udp",
              sport: o.sport!,
              dport: o.dport!,
              flags: 0x02,
            });
      t.equal(opened.verdict, Verdict.Forward);
      const before = parse(error);
      const r = h.processBytes(error);
      t.equal(r.verdict, Verdict.Forward, "the error matches the flow");
      expectPacket(t, r.out, {
        src: before.src,
        dst: HIDDEN,
        icmpType: before.icmpType,
        icmpCode: before.icmpCode,
        icmpRest: before.icmpRest,
        totalLength: before.totalLength,
        embedded: {
          src: HIDDEN,
          dst: o.dst,
          ...(o.proto === 1 ? { icmpId: o.icmpId } : { sport: o.sport, dport: o.dport }),
        },
      });
      t.ok(
        embeddedL4ChecksumOk(r.out.subarray(20)),
        "a fully quoted datagram's own checksum is right for its new addresses",
      );
      // Nothing but the rewritten fields changed: the rest of the quote is the kernel's.
      t.same(quotedRest(r.out), quotedRest(error), "quoted bytes past the ports untouched");
    },
  );
}

t.test("the kernel's port-unreachable leaves an inside host translated outbound", async (t) => {
  // Here the server plays an inside host behind a NAT at 203.0.113.1: it answered a datagram it
  // got through its mapping with 3/3, and the error must leave from the NAT address.
  const { offending: o, error } = errorCase("udp-port-unreachable");
  const h = new NatHarness({
    natAddresses: [ip("203.0.113.1")],
    inside: [{ addr: ip("192.0.2.0"), len: 24 }],
    filtering: "endpoint-independent",
  });
  // The inside host's mapping for port 9, then the client's datagram inbound through it.
  h.send({ src: o.dst, dst: "198.51.100.1", proto: "udp", sport: o.dport!, dport: 1 });
  const inb = h.send({
    src: o.src,
    dst: "203.0.113.1",
    proto: "udp",
    sport: o.sport!,
    dport: o.dport!,
  });
  t.equal(inb.verdict, Verdict.Forward);
  const r = h.processBytes(error.slice());
  t.equal(r.verdict, Verdict.Forward);
  expectPacket(t, r.out, {
    src: "203.0.113.1",
    dst: o.src,
    icmpType: 3,
    icmpCode: 3,
    embedded: { src: o.src, dst: "203.0.113.1", sport: o.sport, dport: o.dport },
  });
});

t.test("the core's ICMP 3/13 is byte for byte the kernel's nftables reject", async (t) => {
  const { error } = errorCase("admin-prohibited-tcp");
  const k = parse(error);
  // What the router rejected is what the kernel quoted; generate our error about it.
  const quoted = error.slice(28);
  const slot = new Uint8Array(2048);
  slot.set(quoted);
  const n = writeIcmpError(slot, 0, quoted.length, 3, 13, 0, ip(k.src), k.ipId);
  t.equal(n, error.length, "same length");
  t.same(slot.subarray(20, n), error.subarray(20), "same ICMP message, checksum included");
  t.ok(checksumsOk(slot.subarray(0, n)).ok);
  // The IP headers differ only where the kernel and the core may choose differently (none here).
  t.same(slot.subarray(0, 20), error.subarray(0, 20), "same IP header, given the same ID");
});

t.test("the core's RST for a SYN is the kernel's, field for field", async (t) => {
  const [syn, rst] = records("tcp-rst");
  const slot = new Uint8Array(2048);
  slot.set(syn!);
  const n = writeRst(slot, 0, 20, syn!.length, 0);
  t.equal(n, rst!.length);
  t.same(
    slot.subarray(20, n),
    rst!.subarray(20),
    "TCP header identical: ports, seq 0, ack, RST|ACK, window 0, checksum",
  );
  const mine = parse(slot.subarray(0, n));
  const theirs = parse(rst!);
  t.equal(mine.df, theirs.df, "DF as the kernel sets it");
  t.ok(checksumsOk(slot.subarray(0, n)).ok);
});

t.test(
  "kernel packets with partial checksums keep a valid partial checksum through the core",
  async (t) => {
    for (const name of ["tcp-offload-partial", "udp-gso-partial"]) {
      const h = new NatHarness({
        natAddresses: [ip("203.0.113.1")],
        inside: [{ addr: ip("10.99.1.0"), len: 24 }],
        vnetHdr: true,
      });
      let checked = 0;
      for (const pkt of records(name)) {
        const p = parse(pkt);
        if (p.src !== CLIENT) continue;
        // A capture has no virtio header: rebuild the one the TUN would have given (NEEDS_CSUM at
        // the transport checksum). The captured checksum field holds the pseudo-header sum.
        const hl = p.ihl;
        const vh = new Uint8Array(10 + pkt.length);
        vh[0] = 1;
        vh[6] = hl & 0xff;
        vh[8] = p.proto === 6 ? 16 : 6;
        vh.set(pkt, 10);
        const r = h.processBytes(vh);
        if (r.verdict !== Verdict.Forward) continue;
        const c = checksumsOk(r.out, 0, { vnet: true });
        t.ok(c.ok, `${name}: ${c.why ?? "partial checksum right"}`);
        checked++;
      }
      t.ok(checked > 0, `${name}: translated ${checked} kernel packets`);
    }
  },
);
