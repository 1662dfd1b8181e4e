/**
 * The `tunnat` command line (yargs): the list of verbs and the parser around them. Each verb is
 * one file exporting a Command (command.ts); adding a verb is that file plus one line in COMMANDS.
 * Contract: a bad flag or setting exits 2 with a message naming it; a runtime failure exits 1
 * with the error's code; success exits 0 (see README.md in this folder).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import yargs, { type Argv } from "yargs";
import { hideBin } from "yargs/helpers";
import { packageRoot } from "../io/package-root.js";
import { check } from "./check.js";
import { type Command, fail } from "./command.js";
import { down } from "./down.js";
import { flows } from "./flows.js";
import { ha } from "./ha.js";
import { lab } from "./lab.js";
import { run } from "./run.js";
import { stats } from "./stats.js";

/** Every verb, in the order --help lists them. */
const COMMANDS: readonly Command[] = [run, down, check, flows, stats, ha, lab];

export function version(): string {
  try {
    const pkg = JSON.parse(
      readFileSync(join(packageRoot() ?? process.cwd(), "package.json"), "utf8"),
    ) as {
      version?: string;
    };
    return pkg.version ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** Add `c` (and its subcommands) to `y`; `set` records the exit code of the verb that ran. */
function register(y: Argv, c: Command, set: (p: Promise<number>) => void): Argv {
  const { run: runVerb, subcommands } = c;
  return y.command(
    c.command,
    c.describe,
    (z) => {
      let b = c.builder ? c.builder(z) : z;
      if (subcommands) {
        for (const s of subcommands) b = register(b, s, set);
        b = b.demandCommand(
          1,
          `choose: tunnat ${c.command} ${subcommands.map((s) => s.command).join("|")}`,
        );
      }
      return b;
    },
    runVerb ? (a) => set(runVerb(a as Record<string, unknown>)) : undefined,
  );
}

export async function main(args: string[] = hideBin(process.argv)): Promise<number> {
  let exitCode = 0;
  const set = (p: Promise<number>) =>
    p.then(
      (c) => {
        exitCode = c;
      },
      (e: unknown) => {
        exitCode = fail(e);
      },
    );
  let parser = yargs(args)
    .scriptName("tunnat")
    .usage("$0 <command> [options]\n\nUserspace NAT44 gateway for Linux.");
  for (const c of COMMANDS) parser = register(parser, c, set);
  parser = parser
    .demandCommand(1, "choose a command")
    .strict()
    .version(version())
    .help()
    .alias("h", "help")
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Handler errors are caught by set(); what reaches here is yargs validation (YError).
      if (err && err.name !== "YError") throw err;
      process.stderr.write(`tunnat: ${msg ?? err?.message}\nrun "tunnat --help" for usage\n`);
      exitCode = 2;
      throw new UsageError();
    });
  try {
    await parser.parseAsync();
  } catch (e) {
    if (!(e instanceof UsageError)) exitCode = fail(e);
  }
  return exitCode;
}

class UsageError extends Error {}
