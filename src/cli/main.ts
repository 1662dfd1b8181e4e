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
import { setRawArgs } from "./format.js";
import { ha } from "./ha.js";
import { lab } from "./lab.js";
import { restart } from "./restart.js";
import { run } from "./run.js";
import { stats } from "./stats.js";
import { status } from "./status.js";

/** Every verb, in the order --help lists them. */
export const COMMANDS: readonly Command[] = [
  run,
  restart,
  down,
  check,
  status,
  flows,
  stats,
  ha,
  lab,
];

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
      for (const [cmd, what] of c.examples ?? []) b = b.example(cmd, what);
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
  setRawArgs(args);
  let parser = buildParser(args, set);
  parser = parser.fail((msg, err) => {
    // Handler errors are caught by set(); what reaches here is yargs validation (YError).
    if (err && err.name !== "YError") throw err;
    process.stderr.write(`tunnat: ${msg ?? err?.message}\nrun "tunnat --help" for usage\n`);
    exitCode = 2;
    throw new UsageError();
  });
  try {
    await parser.parseAsync();
  } catch (e) {
    if (typeof e === "string") {
      // A verb's .check() message (numberOption): yargs throws it as it is, past .fail().
      process.stderr.write(`tunnat: ${e}\nrun "tunnat --help" for usage\n`);
      exitCode = 2;
    } else if (!(e instanceof UsageError)) exitCode = fail(e);
  }
  return exitCode;
}

/**
 * The whole command line: every verb with its flags, help, examples and completion. The man page
 * (scripts/man.js, `npm run man`) is generated from this same parser.
 */
export function buildParser(
  args: string[],
  set: (p: Promise<number>) => void = () => undefined,
  width = Math.min(110, process.stdout.columns || 100),
): Argv {
  let parser = yargs(args)
    .scriptName("tunnat")
    .usage("$0 <command> [options]\n\nUserspace NAT44 gateway for Linux.");
  for (const c of COMMANDS) parser = register(parser, c, set);
  return parser
    .completion("completion", "print a bash/zsh completion script (source it, or save it)")
    .example("$0 check --config /etc/tunnat/tunnat.json", "validate a config and the host")
    .example("$0 status", "one-screen summary of the running gateway")
    .example("$0 flows --nat 203.0.113.1:41234", "which inside host holds an outside port")
    .example("$0 completion >> ~/.bashrc", "shell completion")
    .demandCommand(1, "choose a command")
    .strict()
    .version(version())
    .help()
    .alias("h", "help")
    .wrap(width);
}

class UsageError extends Error {}
