/**
 * Per-host metric series (tunnat_host_*) are created only for inside addresses that passed the
 * translator's checks and got a flow: every way a packet could name a host is tried here with a
 * spoofed or unchecked address, and none may create a series of its own.
 *
 * The ways a host enters the host table, and so a series: FlowTable.createOutbound (an outbound
 * packet from an inside prefix that got a flow) and createInbound (the inside host of an existing
 * mapping). Drops are counted by reason only, never per host.
 */
import t from "tap";
import { createMetrics } from "../../../src/control/metrics.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { DropReason } from "../../../src/nat/stats.js";
import { ACK, SYN } from "../../../src/wire/tcp.js";
import { NAT, NatHarness, P1, SRV } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

/** The host label values of tunnat_host_bytes_total after a scrape. */
async function hostLabels(h: NatHarness): Promise<string[]> {
  const m = createMetrics(
    { stats: h.stats, table: h.nat.table, loopStats: new LoopStats() },
    { defaultMetrics: false },
  );
  try {
    const text = await m.registry.metrics();
    const hosts = new Set<string>();
    for (const line of text.split("\n")) {
      const host = /^tunnat_host_bytes_total\{host="([^"]+)"/.exec(line)?.[1];
      if (host) hosts.add(host);
    }
    return [...hosts].sort();
  } finally {
    m.stop();
  }
}

t.test("spoofed or unchecked sources create no per-host series", async (t) => {
  const cases: [string, Parameters<NatHarness["send"]>[0], number][] = [
    [
      "a NAT address as source, to a NAT address",
      { src: NAT, dst: NAT, proto: "udp", sport: 1, dport: 2 },
      DropReason.Spoofed,
    ],
    [
      "a source outside the inside prefixes",
      { src: "192.0.2.55", dst: SRV, proto: "udp", sport: 1, dport: 2 },
      DropReason.NotNatTraffic,
    ],
    [
      "the inside prefix's network address",
      { src: "10.0.1.0", dst: SRV, proto: "udp", sport: 1000, dport: 53 },
      DropReason.Spoofed,
    ],
    [
      "the inside prefix's broadcast address",
      { src: "10.0.1.255", dst: SRV, proto: "udp", sport: 1000, dport: 53 },
      DropReason.Spoofed,
    ],
    [
      "an inside host's SYN-ACK for a SYN that did not come through the NAT",
      { src: "10.0.1.77", dst: SRV, sport: 22, dport: 40000, flags: SYN | ACK },
      DropReason.TcpSynAckNoFlow,
    ],
    [
      "an ICMP error from an inside host about no flow",
      {
        src: "10.0.1.78",
        dst: SRV,
        proto: "icmp",
        icmpType: 3,
        icmpCode: 3,
        embedded: build({ src: SRV, dst: "10.0.1.78", proto: "udp", sport: 53, dport: 999 }),
      },
      DropReason.IcmpErrorNoFlow,
    ],
    [
      "a forged inside source to a NAT address port without a mapping (from outside, via the NAT address's route)",
      { src: "10.0.1.77", dst: NAT, proto: "udp", sport: 5555, dport: 6666 },
      DropReason.Unsolicited,
    ],
    [
      "a forged inside source's TCP SYN to a NAT address port without a mapping",
      { src: "10.0.1.77", dst: NAT, sport: 5555, dport: 6666, flags: SYN },
      DropReason.Unsolicited,
    ],
    [
      "a forged inside source's echo request to a NAT address",
      { src: "10.0.1.77", dst: NAT, proto: "icmp", icmpType: 8, icmpId: 9 },
      DropReason.Unsolicited,
    ],
    [
      "an unsolicited inbound packet",
      { src: SRV, dst: NAT, proto: "udp", sport: 53, dport: 4000 },
      DropReason.Unsolicited,
    ],
  ];
  for (const [name, spec, reason] of cases) {
    const h = new NatHarness();
    const r = h.send(spec);
    t.equal(r.verdict, 1, `${name}: dropped`);
    t.equal(h.stats.drops[reason], 1, `${name}: counted by reason`);
    t.equal(h.nat.table.hosts.count, 0, `${name}: no host entry`);
    t.same(await hostLabels(h), ["other"], `${name}: no series but "other"`);
  }
});

t.test("a refused flow (over quota, no port) gives its host no series", async (t) => {
  const h = new NatHarness({ portLo: 20000, portHi: 20000 });
  h.send({ src: P1, dst: SRV, proto: "udp", sport: 20000, dport: 1 });
  const r = h.send({ src: "10.0.1.9", dst: SRV, proto: "udp", sport: 30000, dport: 1 });
  t.equal(h.stats.drops[DropReason.PortExhausted], 1, `refused (verdict ${r.verdict})`);
  t.same(await hostLabels(h), [P1, "other"], "only the host that got a flow");
});

t.test(
  "a host that got a flow has its series; /31 and /32 prefixes have no network address",
  async (t) => {
    const h = new NatHarness({
      inside: [
        { addr: ip("10.0.1.0"), len: 24 },
        { addr: ip("10.9.0.0"), len: 31 },
      ],
    });
    h.send({ src: P1, dst: SRV, proto: "udp", sport: 1000, dport: 53 });
    h.send({ src: "10.9.0.0", dst: SRV, proto: "udp", sport: 1000, dport: 53 });
    h.send({ src: "10.9.0.1", dst: SRV, proto: "udp", sport: 1000, dport: 53 });
    t.same(await hostLabels(h), ["10.0.1.2", "10.9.0.0", "10.9.0.1", "other"]);
  },
);
