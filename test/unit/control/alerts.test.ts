/**
 * monitoring/alerts.yml against docs/runbook.md: every rule has a runbook_url naming a section of
 * the runbook that exists, and every section of the runbook is an alert's.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";

const root = process.cwd();
const rules = (
  parseYaml(readFileSync(join(root, "monitoring", "alerts.yml"), "utf8")) as {
    groups: { rules: { alert: string; annotations?: Record<string, string> }[] }[];
  }
).groups.flatMap((g) => g.rules);
const runbook = readFileSync(join(root, "docs", "runbook.md"), "utf8");
/** GitHub's anchors of the runbook's second-level headings. */
const anchors = new Set(
  [...runbook.matchAll(/^## (.+)$/gm)].map((m) => (m[1] ?? "").toLowerCase().replace(/\s+/g, "-")),
);

t.test("every alert rule links a runbook section that exists", async (t) => {
  t.ok(rules.length >= 10, `${rules.length} rules`);
  for (const r of rules) {
    const url = r.annotations?.runbook_url ?? "";
    const m = /^docs\/runbook\.md#([a-z0-9-]+)$/.exec(url);
    t.ok(m, `${r.alert} has a runbook_url into docs/runbook.md (${url})`);
    t.ok(m && anchors.has(m[1] ?? ""), `${r.alert}: the section #${m?.[1]} exists`);
  }
});

t.test("every runbook section belongs to an alert", async (t) => {
  const linked = new Set(rules.map((r) => r.annotations?.runbook_url?.split("#")[1]));
  for (const a of anchors) t.ok(linked.has(a), `#${a} is some rule's runbook_url`);
});
