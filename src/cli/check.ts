/** `tunnat check`: every prerequisite and the config's validity, reported; changes nothing. */
import { describeConfig, loadConfig } from "../control/config.js";
import type { Command } from "./command.js";
import { inputFrom, settingsOptions } from "./command.js";

export const check: Command = {
  command: "check",
  describe: "report every prerequisite and the config's validity; changes nothing",
  builder: (y) => settingsOptions(y).option("json", { type: "boolean", describe: "JSON output" }),
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
    return ok ? 0 : 1;
  },
};
