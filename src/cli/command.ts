/**
 * What a CLI verb is (one file per verb, registered by one line in main.ts), and the pieces the
 * verbs share: the settings flags, the exit code of an error. A verb's module must stay light to
 * import (node: modules, config, the control client): it loads the daemon and the addon inside
 * run(), so --help and --version work on any machine.
 */
import type { Argv } from "yargs";
import { errorMessage, exitCodeFor, isTunnatError } from "../base/errors.js";
import { type LoadInput, settingFlags } from "../control/config.js";
import { AWS_PORTS, AWS_TIMEOUTS } from "../nat/config.js";
import { rawValue } from "./format.js";

/** What --preset aws changes, by field key: shown next to the field's own default. */
const AWS_DEFAULTS: Record<string, string> = {
  "timeouts.tcpEstablished": `${AWS_TIMEOUTS.tcpEstablished}`,
  "timeouts.tcpTransitory": `${AWS_TIMEOUTS.tcpTransitory}`,
  "timeouts.udp": `${AWS_TIMEOUTS.udp}`,
  "timeouts.icmp": `${AWS_TIMEOUTS.icmp}`,
  ports: `${AWS_PORTS[0]}-${AWS_PORTS[1]}`,
};

/** Settings that take a whole number (shown as [number]; config.ts still validates the text). */
function numeric(f: { expect: string }): boolean {
  return /^an integer|^a table id/.test(f.expect);
}

export interface Command {
  /** The yargs command string ("flows", "lab"). */
  command: string;
  describe: string;
  /** Its flags. */
  builder?: (y: Argv) => Argv;
  /** Its exit code (0, 1, 2); a thrown error exits as fail() says. Absent for a verb group. */
  run?: (argv: Record<string, unknown>) => Promise<number>;
  /** `--help` examples: [command line, what it does]. */
  examples?: [string, string][];
  /** Verbs under this one (`tunnat lab up`); one of them must be given. */
  subcommands?: Command[];
}

/** Print the error and return its exit code (2 for a bad setting, else 1). */
export function fail(e: unknown): number {
  const code = isTunnatError(e) ? e.code : "TUNNAT_ERR_INTERNAL";
  process.stderr.write(`tunnat: ${errorMessage(e)} (${code})\n`);
  return isTunnatError(e) ? exitCodeFor(e.code) : 1;
}

/**
 * Add every setting of the schema as a flag. Whole numbers are typed as numbers (shown as
 * [number]); durations say their units; a default that --preset aws changes says so. config.ts
 * parses every value: a middleware hands it the text as typed (not yargs' number), so a bad one
 * is named exactly.
 */
export function settingsOptions(y: Argv): Argv {
  y.option("config", {
    type: "string",
    describe: "JSON config file (settings by their camelCase names)",
    group: "Settings:",
  });
  const numbers: string[] = [];
  for (const f of settingFlags()) {
    const isNumber = numeric(f);
    if (isNumber) numbers.push(f.flag);
    const units = f.expect === "seconds" ? " (seconds, or with a unit: 90s, 5m, 2h, 1d)" : "";
    const aws = AWS_DEFAULTS[f.key];
    y.option(f.flag, {
      // Strings otherwise, booleans too: config.ts parses every value and names a bad one.
      type: isNumber ? "number" : "string",
      describe: `${f.describe}${units}${aws ? ` (${aws} with --preset aws)` : ""}`,
      group: "Settings:",
      requiresArg: f.requiresArg,
    });
  }
  return y.middleware((argv) => {
    for (const flag of numbers) {
      const text = rawValue(flag);
      if (argv[flag] !== undefined && text !== undefined) argv[flag] = text;
    }
  }, true);
}

/** The settings sources of a verb that takes them: its flags and the environment. */
export function inputFrom(argv: Record<string, unknown>): LoadInput {
  return { flags: argv, env: process.env };
}
