import { execFileSync } from "node:child_process";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { createMetrics } from "../../../src/control/metrics.js";
import { readTunCounters } from "../../../src/control/tun-stats.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";

t.test("a device's kernel counters are read from sysfs, as ip -s link shows them", async (t) => {
  // The loopback device is real and always there; its queue length is fixed, its counters only grow.
  const a = readTunCounters("lo");
  t.ok(a, "lo has counters");
  const ipj = JSON.parse(
    execFileSync("ip", ["-j", "-s", "link", "show", "lo"], { encoding: "utf8" }),
  )[0] as {
    txqlen: number;
    stats64: { rx: { packets: number; dropped: number }; tx: { packets: number; dropped: number } };
  };
  const b = readTunCounters("lo");
  t.equal(a?.txQueueLen, ipj.txqlen, "tx_queue_len as ip shows it");
  t.ok((a?.toDaemon.packets ?? -1) <= ipj.stats64.tx.packets, "tx packets, read before ip");
  t.ok((b?.toDaemon.packets ?? -1) >= ipj.stats64.tx.packets, "and after");
  t.ok((a?.fromDaemon.dropped ?? -1) <= ipj.stats64.rx.dropped);
  t.ok((b?.fromDaemon.dropped ?? -1) >= ipj.stats64.rx.dropped);
});

t.test("a missing or odd device name reads as null, never as another path", async (t) => {
  t.equal(readTunCounters("tnnope0"), null);
  t.equal(readTunCounters("../lo"), null);
  t.equal(readTunCounters(".."), null);
  t.equal(readTunCounters(""), null);
});

t.test("the TUN counters are exported by direction, with the queue length", async (t) => {
  const stats = new NatStats();
  const tr = newTranslator(
    defaultNatConfig({ natAddresses: [1], inside: [{ addr: 0x0a000000, len: 8 }], maxFlows: 64 }),
    new ManualClock(),
    stats,
  );
  let reads = 0;
  const dir = (n: number) => ({
    packets: n,
    bytes: n * 100,
    dropped: n + 1,
    errors: n + 2,
    fifoErrors: n + 3,
  });
  const m = createMetrics(
    {
      stats,
      table: tr.table,
      loopStats: new LoopStats(),
      tunCounters: () => {
        reads++;
        return { toDaemon: dir(10), fromDaemon: dir(20), txQueueLen: 500 };
      },
    },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  const text = await m.registry.metrics();
  t.match(text, /tunnat_tun_packets_dropped_total\{direction="to_daemon"\} 11\n/);
  t.match(text, /tunnat_tun_packets_dropped_total\{direction="from_daemon"\} 21\n/);
  t.match(text, /tunnat_tun_packets_total\{direction="to_daemon"\} 10\n/);
  t.match(text, /tunnat_tun_errors_total\{direction="from_daemon"\} 22\n/);
  t.match(text, /tunnat_tun_fifo_errors_total\{direction="to_daemon"\} 13\n/);
  t.match(text, /tunnat_tun_tx_queue_length 500\n/);
  t.equal(reads, 1, "one sysfs read serves the whole scrape");
});

t.test("without a readable TUN no TUN series is exported", async (t) => {
  const stats = new NatStats();
  const tr = newTranslator(
    defaultNatConfig({ natAddresses: [1], inside: [{ addr: 0x0a000000, len: 8 }], maxFlows: 64 }),
    new ManualClock(),
    stats,
  );
  const m = createMetrics(
    { stats, table: tr.table, loopStats: new LoopStats(), tunCounters: () => null },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  t.notMatch(await m.registry.metrics(), /^tunnat_tun_\w+[{ ]/m);
});
