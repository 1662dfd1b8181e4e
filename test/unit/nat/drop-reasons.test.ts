// The drop-reason list is the one definition: counters, metric labels and the documentation's
// table of reasons follow it.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { DROP_REASON_NAMES, DROP_REASONS, DropReason, NatStats } from "../../../src/nat/stats.js";

const root = join(import.meta.dirname, "..", "..", "..", "..");

t.test("docs/observability.md lists exactly the drop reasons of DROP_REASONS", async (t) => {
  const doc = readFileSync(join(root, "docs", "observability.md"), "utf8");
  const start = doc.indexOf("Drop reasons (`reason` label):");
  t.ok(start >= 0, "the paragraph of drop reasons is there");
  const end = doc.indexOf("\n\n", start);
  const para = doc.slice(start, end < 0 ? undefined : end);
  const listed = new Set(
    [...para.matchAll(/`([a-z0-9_]+)`/g)].map((m) => m[1]).filter((w) => w !== "reason"),
  );
  t.same([...listed].sort(), DROP_REASONS.map((r) => r.label).sort());
});

t.test("ids, labels and counters are derived from the one list", async (t) => {
  DROP_REASONS.forEach((r, i) => {
    t.equal(DropReason[r.id], i, r.id);
    t.equal(DROP_REASON_NAMES[i], r.label);
    t.ok(r.help.length > 0, `${r.label} has help`);
  });
  t.equal(new Set(DROP_REASONS.map((r) => r.label)).size, DROP_REASONS.length, "labels unique");
  t.equal(new NatStats().drops.length, DROP_REASONS.length);
});
