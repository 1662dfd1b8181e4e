/**
 * The man page, tunnat(1), generated from the same yargs definitions as --help (main.ts): the
 * help text of the program and of every verb, set in roff. `npm run man` writes man/tunnat.1;
 * a unit test fails when the checked-in page differs from what this produces.
 */
import type { Argv } from "yargs";
import { buildParser, COMMANDS, version } from "./main.js";

const WIDTH = 80;

/** The --help text of `args` (e.g. ["flows"]), without printing or exiting. */
function helpText(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p: Argv = buildParser([...args, "--help"], () => undefined, WIDTH).exitProcess(false);
    p.parse([...args, "--help"], {}, (err: Error | undefined, _argv: unknown, output: string) => {
      if (err) reject(err);
      else resolve(output);
    });
  });
}

/** roff-escape one line of preformatted text. */
function esc(line: string): string {
  const l = line.replace(/\\/g, "\\e").replace(/-/g, "\\-");
  return /^[.']/.test(l) ? `\\&${l}` : l;
}

function block(text: string): string {
  return `.nf\n${text.replace(/\s+$/, "").split("\n").map(esc).join("\n")}\n.fi\n`;
}

export async function manPage(): Promise<string> {
  const out: string[] = [];
  out.push(`.TH TUNNAT 1 "" "tunnat ${version()}" "User Commands"`);
  out.push(".SH NAME\ntunnat \\- userspace NAT44 gateway for Linux");
  out.push(".SH SYNOPSIS\n.B tunnat\n.I command\n[\\fIoptions\\fR]");
  out.push(
    ".SH DESCRIPTION\ntunnat reads IPv4 packets from a TUN device and translates them with " +
      "connection-tracked SNAT. Each command below is shown with its own options, as " +
      "\\fBtunnat\\fR \\fIcommand\\fR \\fB\\-\\-help\\fR prints them.",
  );
  out.push(`.SH OVERVIEW\n${block(await helpText([]))}`);
  out.push(".SH COMMANDS");
  const verbs: string[][] = [];
  for (const c of COMMANDS) {
    const name = c.command.split(" ")[0] ?? c.command;
    if (c.subcommands) for (const s of c.subcommands) verbs.push([name, s.command]);
    else verbs.push([name]);
  }
  verbs.push(["completion"]);
  for (const v of verbs) out.push(`.SS tunnat ${v.join(" ")}\n${block(await helpText(v))}`);
  out.push(
    ".SH EXIT STATUS\n0 on success; 1 on a runtime failure (the message ends with its error " +
      "code, see docs/errors.md); 2 on a bad flag, option value or setting (the message names it).",
  );
  out.push(
    ".SH FILES\n/run/tunnat/tunnat.sock \\- the control socket of flows, stats and status.\n" +
      ".br\n/etc/tunnat/tunnat.json \\- a config file, when --config names it.",
  );
  out.push('.SH "SEE ALSO"\nconntrack(8), ip(8), nft(8)');
  return `${out.join("\n")}\n`;
}
