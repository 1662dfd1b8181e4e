/**
 * What a CLI verb is (one file per verb, registered by one line in main.ts), and the pieces the
 * verbs share: the settings flags, the exit code of an error. A verb's module must stay light to
 * import (node: modules, config, the control client): it loads the daemon and the addon inside
 * run(), so --help and --version work on any machine.
 */
import type { Argv } from "yargs";
import { errorMessage, exitCodeFor, isTunnatError } from "../base/errors.js";
import { type LoadInput, settingFlags } from "../control/config.js";

export interface Command {
  /** The yargs command string ("flows", "lab"). */
  command: string;
  describe: string;
  /** Its flags. */
  builder?: (y: Argv) => Argv;
  /** Its exit code (0, 1, 2); a thrown error exits as fail() says. Absent for a verb group. */
  run?: (argv: Record<string, unknown>) => Promise<number>;
  /** Verbs under this one (`tunnat lab up`); one of them must be given. */
  subcommands?: Command[];
}

/** Print the error and return its exit code (2 for a bad setting, else 1). */
export function fail(e: unknown): number {
  const code = isTunnatError(e) ? e.code : "TUNNAT_ERR_INTERNAL";
  process.stderr.write(`tunnat: ${errorMessage(e)} (${code})\n`);
  return isTunnatError(e) ? exitCodeFor(e.code) : 1;
}

/** Add every setting of the schema as a flag (strings, so config.ts validates and names them). */
export function settingsOptions(y: Argv): Argv {
  y.option("config", {
    type: "string",
    describe: "JSON config file (settings by their camelCase names)",
    group: "Settings:",
  });
  // Strings, booleans too: config.ts parses every value and names a bad one.
  for (const f of settingFlags())
    y.option(f.flag, {
      type: "string",
      describe: f.describe,
      group: "Settings:",
      requiresArg: f.requiresArg,
    });
  return y;
}

/** The settings sources of a verb that takes them: its flags and the environment. */
export function inputFrom(argv: Record<string, unknown>): LoadInput {
  return { flags: argv, env: process.env };
}
