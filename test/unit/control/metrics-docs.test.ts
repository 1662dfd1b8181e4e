/**
 * docs/observability.md is held against the metric registry, as docs/errors.md is against the
 * error codes: every metric the daemon registers is documented by name, and every tunnat_ name
 * the page mentions exists (histogram and summary series by their family name).
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { createMetrics } from "../../../src/control/metrics.js";
import { TableStateStats } from "../../../src/control/table-keeper.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { emptyHaSnapshot } from "../../../src/ha/snapshot.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";
import { ip } from "../../helpers/packet.js";

const docs = readFileSync(join(process.cwd(), "docs", "observability.md"), "utf8");

/** Every tunnat metric the daemon can register: all optional parts of the view present. */
async function registered(): Promise<string[]> {
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [ip("203.0.113.1")],
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: 1024,
  });
  const tr = newTranslator(cfg, new ManualClock(), stats);
  const m = createMetrics(
    {
      stats,
      table: tr.table,
      loopStats: new LoopStats(),
      readiness: () => null,
      mappingLog: { lines: 0, dropped: 0 },
      guardDrops: async () => null,
      lastGuardDrops: () => null,
      tunName: "tun-test",
      tunCounters: () => null,
      tunQueues: () => null,
      ha: () => ({ ...emptyHaSnapshot(), takeoverFailures: { ec2: 0 }, rejected: { mac: 0 } }),
      tableState: new TableStateStats(),
    },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  return (await m.registry.getMetricsAsJSON())
    .map((x) => x.name)
    .filter((n) => n.startsWith("tunnat_"));
}

/** A documented name: the family of a _bucket/_sum/_count series. */
function family(name: string, known: Set<string>): string {
  for (const suffix of ["_bucket", "_sum", "_count"])
    if (name.endsWith(suffix) && known.has(name.slice(0, -suffix.length)))
      return name.slice(0, -suffix.length);
  return name;
}

t.test("every metric the daemon registers is documented in docs/observability.md", async (t) => {
  const names = await registered();
  t.ok(names.length >= 40, `${names.length} metrics registered`);
  for (const n of names) t.match(docs, new RegExp(`\\b${n}\\b`), `${n} is documented`);
});

t.test("docs/observability.md documents no tunnat_ metric the registry lacks", async (t) => {
  const known = new Set(await registered());
  const documented = new Set(docs.match(/\btunnat_[a-z0-9_]+/g) ?? []);
  t.ok(documented.size > 0);
  for (const n of documented) t.ok(known.has(family(n, known)), `${n} is a registered metric`);
});
