// The inside-host table (hosts.ts): quota counts, traffic folding, backward-shift deletion, and
// what happens when it is full.
import t from "tap";
import { HostTable } from "../../../src/conntrack/hosts.js";
import { ConntrackStats } from "../../../src/conntrack/stats.js";
import { FlowTable, Proto, Refusal } from "../../../src/conntrack/table.js";
import { defaultNatConfig } from "../../../src/nat/config.js";

const BASE = 0x0a000000;

t.test("hosts stay findable through random arrivals and departures", async (t) => {
  const h = new HostTable(16, 99); // 16 slots, 12 hosts at most: long clusters
  const live = new Set<number>();
  let x = 7;
  for (let step = 0; step < 5000; step++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const addr = BASE + ((x >>> 8) % 40);
    if (live.has(addr)) {
      h.removeFlow(addr, 0, true, 0, 0, 0, 0);
      live.delete(addr);
    } else if (h.addFlow(addr, 0, true)) {
      live.add(addr);
    } else {
      t.equal(live.size, h.maxHosts, "refused only when full");
    }
    for (const a of live) if (h.find(a) < 0) t.fail(`host ${a} lost at step ${step}`);
  }
  t.equal(h.count, live.size);
  for (let i = 0; i < 40; i++) {
    if (!live.has(BASE + i)) t.equal(h.find(BASE + i), -1);
  }
});

t.test("a host's mapping count rises and falls with its mappings", async (t) => {
  const h = new HostTable(16, 1);
  h.addFlow(BASE, 1, true);
  h.addFlow(BASE, 1, false);
  h.addFlow(BASE, 0, true);
  t.equal(h.mappings(BASE, 1), 1);
  t.equal(h.mappings(BASE, 0), 1);
  h.removeFlow(BASE, 1, false, 1, 10, 2, 20);
  t.equal(h.mappings(BASE, 1), 1, "a flow left but the mapping stays");
  h.removeFlow(BASE, 1, true, 1, 10, 0, 0);
  t.equal(h.mappings(BASE, 1), 0);
  h.removeFlow(BASE, 0, true, 0, 0, 0, 5);
  t.equal(h.find(BASE), -1, "gone with its last flow");
  t.same(
    [h.departedPktsOut, h.departedBytesOut, h.departedPktsIn, h.departedBytesIn],
    [2, 20, 2, 25],
    "its traffic moved to departed",
  );
});

t.test(
  "with a full host table a quota refuses new hosts, no quota lets them through",
  async (t) => {
    for (const perHostQuota of [0, 4]) {
      const stats = new ConntrackStats();
      // 64 flows -> the smallest host table: 16 slots, 12 hosts.
      const table = new FlowTable(
        defaultNatConfig({ natAddresses: [0xc6336401], maxFlows: 64, perHostQuota, hashSeed: 3 }),
        stats,
      );
      let refused = 0;
      let overQuota = 0;
      for (let i = 0; i < 20; i++) {
        const r = table.createOutbound(Proto.UDP, BASE + i, 5000, 0xcb00710a, 53, 1000);
        if (r < 0) refused++;
        if (r === -1 - Refusal.QuotaExceeded) overQuota++;
      }
      t.equal(table.hosts.count, table.hosts.maxHosts);
      if (perHostQuota > 0) {
        t.equal(refused, 20 - table.hosts.maxHosts, "hosts beyond the table are refused");
        t.equal(overQuota, refused, "each refused as over its quota");
      } else {
        t.equal(refused, 0, "untracked hosts still get flows");
      }
    }
  },
);
