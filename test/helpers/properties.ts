/**
 * The core's properties, shared by the bounded unit run and the long `npm run fuzz` run:
 *  1. no packet makes the translator throw;
 *  2. every packet it emits from well-formed input has correct checksums by full recomputation;
 *  3. an outbound packet and then its reply inbound restore the original addresses and ports.
 */
import { Verdict } from "../../src/nat/translate.js";
import { checksumsOk } from "./checker.js";
import { Rng, randomOutbound, randomPacket } from "./gen.js";
import { NatHarness } from "./nat.js";
import { build, parse } from "./packet.js";

export interface Tap {
  ok(v: unknown, msg: string): boolean;
  fail(msg: string): boolean;
}

export function runProperties(t: Tap, seed: number, runs: number): void {
  const r = new Rng(seed);
  const filtering = [
    "address-and-port-dependent",
    "address-dependent",
    "endpoint-independent",
  ] as const;
  const h = new NatHarness({ filtering: filtering[seed % 3]!, maxFlows: 1 << 14, hashSeed: seed });
  let failures = 0;
  let emitted = 0;
  for (let i = 0; i < runs && failures < 5; i++) {
    const { bytes, mutated } = randomPacket(r);
    let res: ReturnType<NatHarness["processBytes"]>;
    try {
      res = h.processBytes(bytes);
    } catch (err) {
      failures++;
      t.fail(`seed ${seed} case ${i}: threw ${(err as Error).stack}`);
      continue;
    }
    if (r.chance(0.01)) h.wait(r.int(400));
    if (res.verdict === Verdict.Drop || mutated) continue;
    emitted++;
    const c = checksumsOk(res.out);
    if (!c.ok) {
      failures++;
      t.fail(`seed ${seed} case ${i}: emitted a packet with ${c.why}`);
    }
  }
  t.ok(
    failures === 0,
    `seed ${seed}: ${runs} random packets, ${emitted} emitted, none threw or broke a checksum`,
  );

  let roundTrips = 0;
  for (let i = 0; i < runs / 4 && failures < 5; i++) {
    const spec = randomOutbound(r);
    if (spec.proto === "tcp") spec.flags = 0x02;
    const out = h.send(spec);
    if (out.verdict !== Verdict.Forward) continue;
    const o = out.pkt!;
    const reply = build(
      spec.proto === "icmp"
        ? { src: o.dst, dst: o.src, proto: "icmp", icmpType: 0, icmpId: o.icmpId! }
        : {
            src: o.dst,
            dst: o.src,
            proto: spec.proto,
            sport: o.dport!,
            dport: o.sport!,
            flags: 0x12,
          },
    );
    const back = h.processBytes(reply);
    if (back.verdict !== Verdict.Forward) {
      failures++;
      t.fail(`seed ${seed} round trip ${i}: reply dropped (reason ${back.dropReason})`);
      continue;
    }
    const b = parse(back.out);
    const same =
      b.dst === spec.src &&
      b.src === spec.dst &&
      (spec.proto === "icmp"
        ? b.icmpId === spec.icmpId
        : b.dport === spec.sport && b.sport === spec.dport);
    if (!same) {
      failures++;
      t.fail(
        `seed ${seed} round trip ${i}: ${JSON.stringify(spec)} came back as ${b.src}:${b.sport} -> ${b.dst}:${b.dport}`,
      );
    }
    roundTrips++;
  }
  t.ok(
    failures === 0 && roundTrips > 0,
    `seed ${seed}: ${roundTrips} round trips restored the original endpoints`,
  );
}
