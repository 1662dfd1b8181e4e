import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { DataLoop } from "../../../src/datapath/loop.js";
import { MemoryDevice } from "../../../src/io/memory-device.js";
import { NatHarness, P1, P2, SRV } from "../../helpers/nat.js";
import { build, parse } from "../../helpers/packet.js";

/** A device whose kernel refuses the first packet of every write (as ENOBUFS would). */
class LossyDevice extends MemoryDevice {
  override write(count: number): number {
    for (let i = 0; i < count; i++) {
      if (this.lengths[i]! > 0) {
        this.lengths[i] = 0;
        break;
      }
    }
    return super.write(count);
  }
}

t.test("a batch is translated in place and written back in one call, drops left out", async (t) => {
  const h = new NatHarness();
  const dev = new MemoryDevice({ slots: 8 });
  const loop = new DataLoop(dev, h.nat, new ManualClock());
  loop.start();
  t.teardown(() => loop.stop());
  dev.inject(build({ src: P1, dst: SRV, proto: "udp", sport: 1000, dport: 53 }));
  dev.inject(build({ src: SRV, dst: "203.0.113.1", proto: "udp", sport: 1, dport: 2 })); // unsolicited
  dev.inject(build({ src: P2, dst: SRV, proto: "udp", sport: 1002, dport: 53 }));
  dev.flush();
  t.equal(dev.writeCalls, 1, "one write for the batch");
  t.same(
    dev.sent.map((p) => parse(p).src),
    ["203.0.113.1", "203.0.113.1"],
    "both outbound packets translated, the unsolicited one not sent",
  );
  t.equal(loop.loopStats.batches, 1);
  t.equal(loop.loopStats.packets, 3);
  t.equal(loop.loopStats.written, 2);
  t.equal(loop.loopStats.writeDrops, 0);
  t.equal(loop.loopStats.batchSizeCounts[2], 1, "a batch of 3 lands in the <=4 bucket");
});

t.test("packets the device refuses are counted as write drops", async (t) => {
  const h = new NatHarness();
  const dev = new LossyDevice({ slots: 8 });
  const loop = new DataLoop(dev, h.nat, new ManualClock());
  loop.start();
  t.teardown(() => loop.stop());
  for (let i = 0; i < 4; i++) {
    dev.inject(build({ src: P1, dst: SRV, proto: "udp", sport: 2000 + i, dport: 53 }));
  }
  dev.flush();
  t.equal(loop.loopStats.written, 3);
  t.equal(loop.loopStats.writeDrops, 1);
});
