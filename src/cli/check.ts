/**
 * `tunnat check`: every prerequisite and the config's validity, reported; changes nothing and
 * opens no TUN, so it runs on a live gateway too (the daemon's own TUN is then not a conflict).
 * Exits 0 when all pass, 2 when the config is invalid (as `run` does), 1 when a prerequisite fails.
 */
import { describeConfig, loadConfig } from "../control/config.js";
import type { Command } from "./command.js";
import { inputFrom, settingsOptions } from "./command.js";

export const check: Command = {
  command: "check",
  describe: "report every prerequisite and the config's validity; changes nothing",
  builder: (y) => settingsOptions(y).option("json", { type: "boolean", describe: "JSON output" }),
  examples: [
    [
      "$0 check --config /etc/tunnat/tunnat.json",
      "before the first start, or on a running gateway",
    ],
    ["$0 check --json --inside 10.0.0.0/16 --nat-address 172.16.4.7", "machine-readable results"],
  ],
  async run(argv) {
    const { runChecks, formatChecks } = await import("../control/checks.js");
    const results = await runChecks({ input: inputFrom(argv) });
    const ok = results.every((r) => r.ok);
    // The effective settings, every field (null when the config is invalid: "config" says why).
    let settings: ReturnType<typeof describeConfig> | null = null;
    try {
      settings = describeConfig(loadConfig(inputFrom(argv)));
    } catch {}
    if (argv.json)
      process.stdout.write(`${JSON.stringify({ ok, checks: results, settings }, null, 2)}\n`);
    else process.stdout.write(formatChecks(results));
    if (ok) return 0;
    return results.some((r) => r.name === "config" && !r.ok) ? 2 : 1;
  },
};
