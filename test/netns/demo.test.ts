/**
 * `tunnat lab demo` end to end (root; skipped otherwise): it builds its own lab (namespaces
 * tndemo-<pid>-*), runs the daemon, sends ping, HTTP and iperf3 through it and removes everything.
 * The story it prints must be readable: the drawing with the lab's addresses, RTTs in ms, the
 * address the HTTP server saw (the NAT address), iperf3 with units and a labelled retransmit
 * column, a metrics table with units and no raw floats, the full scrape in a file it names, and
 * no hint to run `lab down` (it cleans up itself). Nothing of it may be left afterwards.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { packageRoot } from "../../src/io/package-root.js";
import { BIN, missing } from "./helpers/lab.js";

const ROOT = packageRoot() ?? process.cwd();
const lab = JSON.parse(readFileSync(join(ROOT, "lab", "lab.json"), "utf8")) as {
  inside: { hosts: Record<string, string>; gateway: string };
  outside: { natAddress: string; inet: string[] };
};
const reason = missing(["iperf3", "curl", "python3"]);
if (reason) t.plan(0, reason);
else
  t.test("the demo tells what was set up, what crossed and what tunnat counted", async (t) => {
    const prefix = "tndemo";
    const r = spawnSync(process.execPath, [BIN, "lab", "demo", "--prefix", prefix], {
      encoding: "utf8",
      timeout: 180_000,
    });
    const out = r.stdout;
    t.equal(r.status, 0, `the demo exits 0${r.status ? `: ${r.stderr}` : ""}`);
    const leftover = spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout;
    t.notMatch(leftover, new RegExp(`^${prefix}-${"\\d+"}-`, "m"), "no namespace is left");
    for (const a of [...Object.values(lab.inside.hosts), lab.inside.gateway, ...lab.outside.inet])
      t.match(out, a, `the drawing shows ${a}`);
    t.match(out, /[┌└├┐┘]/, "as a drawing");
    t.match(out, /3 of 3 echo requests answered, round trip [\d.]+ \/ [\d.]+ \/ [\d.]+ ms/);
    t.match(
      out,
      `the server on inet saw the client as ${lab.outside.natAddress} (the NAT address`,
      "the HTTP server saw the NAT address",
    );
    t.match(out, /transferred\s+throughput\s+TCP retransmits/, "iperf3's columns are labelled");
    t.match(out, /sent by p1\s+[\d.]+ [kMG]B\s+[\d.]+ [kMG]bit\/s\s+[\d,]+/, "with units");
    t.match(out, /TCP flows in the table\s+\d+: \d+ established, \d+ closed/, "flows explained");
    t.match(out, /sent to the internet\s+[\d.]+ [kMG]?B in [\d,]+ packets/);
    t.notMatch(out, /\d\.\d{4,}/, "no raw float anywhere");
    t.notMatch(out, /lab down|--name/, "no hint to take down a lab the demo removes itself");
    const file = /saved in (\S+)\.$/m.exec(out)?.[1] ?? "";
    t.ok(file && existsSync(file), `the full scrape is in ${file}`);
    if (file && existsSync(file)) {
      const scrape = readFileSync(file, "utf8");
      t.match(scrape, /^tunnat_out_to_destination_bytes_total [1-9]/m, "with the traffic in it");
      rmSync(file, { force: true });
    }
  });
