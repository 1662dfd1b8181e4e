/**
 * `tunnat down`: open a gateway on purpose. Removes what outlives the daemon (the guard of
 * control/guard.ts: policy rules, the throw and prohibit routes of its table, the nft table) and a
 * stopped or crashed run's leftover plumbing, found from the same settings as `tunnat run`
 * (config file, environment, flags). Refuses while a daemon of this configuration runs.
 * Idempotent: a second run says there is nothing to remove and exits 0.
 */

import { ErrorCode, TunnatError } from "../base/errors.js";
import { type LoadInput, loadConfig } from "../control/config.js";
import type { Runner } from "../control/runner.js";
import { type Command, inputFrom, settingsOptions } from "./command.js";

export const down: Command = {
  command: "down",
  describe:
    "remove the guard that keeps a stopped gateway closed, and a stopped run's leftovers (same settings as run)",
  builder: settingsOptions,
  run: (argv) => downCommand(inputFrom(argv)),
};

async function downCommand(
  input: LoadInput,
  out: (s: string) => void = (s) => process.stdout.write(s),
  runner?: Runner,
): Promise<number> {
  const cfg = loadConfig(input);
  const { socketAnswers } = await import("../control/owner.js");
  const { Plumbing } = await import("../control/plumbing.js");
  const { plumbingSpec } = await import("../control/daemon.js");
  const { hostRunner } = await import("../control/runner.js");
  if (!cfg.control.manageRoutes) {
    out("tunnat down: with --no-manage-routes tunnat installs nothing; nothing to remove\n");
    return 0;
  }
  if (await socketAnswers(cfg.control.controlSocket))
    throw new TunnatError(
      ErrorCode.Prereq,
      `a tunnat daemon answers on ${cfg.control.controlSocket}: stop it first (systemctl stop tunnat), then run tunnat down`,
    );
  const p = new Plumbing(plumbingSpec(cfg), { runner: runner ?? hostRunner() });
  const r = await p.down();
  if (r.done.length === 0) out("tunnat down: nothing to remove\n");
  else out(`tunnat down: removed\n${r.done.map((d) => `  ${d}\n`).join("")}`);
  if (r.warnings.length > 0) {
    process.stderr.write(
      `tunnat down: some items could not be removed:\n  ${r.warnings.join("\n  ")}\n`,
    );
    return 1;
  }
  return 0;
}
