/**
 * Seeded random packets for property tests and the fuzz run. Deterministic for a seed, so a
 * failure prints the seed and case number that reproduce it.
 */
import { ACK, FIN, PSH, RST, SYN } from "../../src/wire/tcp.js";
import { build, type PktSpec } from "./packet.js";

/** xorshift32: small, fast, and good enough to pick test cases. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  int(n: number): number {
    return this.next() % n;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p;
  }
}

const INSIDE_HOSTS = ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.200"];
const REMOTES = ["203.0.113.10", "203.0.113.11", "198.51.100.7"];
const NAT_ADDR = "203.0.113.1";
const TCP_FLAGS = [SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK];

/** A well-formed outbound packet (TCP, UDP or echo request) from a random inside host. */
export function randomOutbound(r: Rng): PktSpec {
  const src = r.pick(INSIDE_HOSTS);
  const dst = r.pick(REMOTES);
  const kind = r.int(3);
  const payload = new Uint8Array(r.int(64));
  for (let i = 0; i < payload.length; i++) payload[i] = r.int(256);
  const ttl = 2 + r.int(250);
  if (kind === 0) {
    return {
      src,
      dst,
      proto: "udp",
      sport: 1 + r.int(65535),
      dport: 1 + r.int(65535),
      payload,
      ttl,
    };
  }
  if (kind === 1) {
    return {
      src,
      dst,
      proto: "tcp",
      sport: 1 + r.int(65535),
      dport: 1 + r.int(65535),
      flags: r.chance(0.6) ? SYN : r.pick(TCP_FLAGS),
      seq: r.next(),
      ack: r.next(),
      payload,
      ttl,
    };
  }
  return {
    src,
    dst,
    proto: "icmp",
    icmpType: 8,
    icmpId: r.int(65536),
    icmpSeq: r.int(65536),
    payload,
    ttl,
  };
}

/** Any packet at all: well-formed, from anywhere, an ICMP error, or bytes mutated at random. */
export function randomPacket(r: Rng): { bytes: Uint8Array; mutated: boolean } {
  let spec: PktSpec;
  const k = r.int(5);
  if (k <= 1) spec = randomOutbound(r);
  else if (k === 2) {
    const o = randomOutbound(r);
    spec = { ...o, src: r.pick(REMOTES), dst: NAT_ADDR };
  } else if (k === 3) {
    const inner = build({ ...randomOutbound(r), src: NAT_ADDR });
    spec = {
      src: r.pick(REMOTES),
      dst: NAT_ADDR,
      proto: "icmp",
      icmpType: r.pick([3, 11, 12]),
      icmpCode: r.int(16),
      embedded: inner.subarray(0, Math.min(inner.length, 28 + r.int(40))),
    };
  } else {
    spec = { ...randomOutbound(r), ipOptions: new Uint8Array([1, 1, 1, 0]) };
  }
  let bytes = build(spec);
  let mutated = false;
  if (r.chance(0.5)) {
    mutated = true;
    const n = 1 + r.int(4);
    for (let i = 0; i < n; i++) {
      const what = r.int(3);
      if (what === 0) bytes[r.int(bytes.length)] = r.int(256);
      else if (what === 1) bytes = bytes.subarray(0, r.int(bytes.length + 1));
      else {
        const longer = new Uint8Array(bytes.length + r.int(16));
        longer.set(bytes);
        bytes = longer;
      }
    }
  }
  return { bytes, mutated };
}
