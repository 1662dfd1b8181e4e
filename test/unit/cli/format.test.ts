/** How the CLI shows numbers, and how a bad numeric option exits 2 naming option and value. */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import t from "tap";
import {
  humanByName,
  humanBytes,
  humanCount,
  humanSeconds,
  rawValue,
  setRawArgs,
} from "../../../src/cli/format.js";

const BIN = join(process.cwd(), "bin", "tunnat.js");
const tunnat = (args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 20_000 });

t.test("bytes, counts and seconds read as a person writes them", async (t) => {
  t.equal(humanBytes(0), "0 B");
  t.equal(humanBytes(1023), "1023 B");
  t.equal(humanBytes(1536), "1.5 KiB");
  t.equal(humanBytes(20 * 1024 * 1024), "20 MiB");
  t.equal(humanBytes(3.2 * 1024 ** 3), "3.2 GiB");
  t.equal(humanCount(999), "999");
  t.equal(humanCount(1234), "1.2k");
  t.equal(humanCount(45_600_000), "46M");
  t.equal(humanCount(0.5), "0.50");
  t.equal(humanSeconds(0), "0s");
  t.equal(humanSeconds(59), "59s");
  t.equal(humanSeconds(3725), "1h2m5s");
  t.equal(humanSeconds(90061), "1d1h1m1s");
  t.equal(humanSeconds(7440), "2h4m");
  t.equal(humanByName("bytesOutToDestination", 2048), "2.0 KiB");
  t.equal(humanByName("batchSeconds", 0.25), "0.25 s");
  t.equal(humanByName("flowsCreated", 1500), "1.5k");
});

t.test("rawValue finds an option's text as typed, both spellings, the last one", async (t) => {
  setRawArgs(["flows", "--limit", "abc", "--limit=7x"]);
  t.equal(rawValue("limit"), "7x");
  setRawArgs(["flows", "--limit", "abc"]);
  t.equal(rawValue("limit"), "abc");
  t.equal(rawValue("host"), undefined);
  setRawArgs([]);
});

t.test("every numeric option is validated: exit 2 naming the option and the value", async (t) => {
  for (const [args, re] of [
    [["flows", "--limit", "abc"], /invalid --limit "abc": expected an integer >= 0/],
    [["flows", "--limit=1.5"], /invalid --limit "1.5"/],
    [["flows", "--limit", "-3"], /invalid --limit "-3"/],
    [["status", "--interval", "x"], /invalid --interval "x": expected an integer 0..60/],
    [["run", "--max-flows", "abc"], /invalid --max-flows "abc"/],
    [["check", "--top-hosts", "0x10"], /"0x10"/],
  ] as [string[], RegExp][]) {
    const r = tunnat(args);
    t.equal(r.status, 2, `${args.join(" ")} exits 2`);
    t.match(r.stderr + r.stdout, re, args.join(" "));
  }
});

t.test("help: numbers typed, durations with units, preset defaults, examples", async (t) => {
  const run = tunnat(["run", "--help"]).stdout;
  t.match(run, /--max-flows[^\n]*\n?[^\n]*\[number\]/, "--max-flows is a [number]");
  t.match(run, /--udp-timeout[\s\S]*?seconds, or with a unit: 90s, 5m, 2h, 1d/);
  t.match(run, /--udp-timeout[\s\S]*?350\s+with --preset aws/);
  t.match(run, /--ports[\s\S]*?1024-65535\s+with --preset aws/);
  const flows = tunnat(["flows", "--help"]).stdout;
  t.match(flows, /Examples:[\s\S]*tunnat flows --nat 203\.0\.113\.1:41234/);
  t.match(flows, /--limit[^\n]*\[number\]/);
  const top = tunnat(["--help"]).stdout;
  t.match(top, /tunnat status/);
  t.match(top, /tunnat completion/);
});

t.test("tunnat completion prints a completion script naming the verbs", async (t) => {
  const r = tunnat(["completion"]);
  t.equal(r.status, 0);
  t.match(r.stdout, /tunnat-completions/);
  const c = spawnSync(process.execPath, [BIN, "--get-yargs-completions", "fl"], {
    encoding: "utf8",
  });
  t.match(c.stdout, /flows/);
});
