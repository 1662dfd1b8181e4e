#!/usr/bin/env node
// Runs the compiled test suites with node-tap and ends with the line CI reads:
// "N passed, N failed, N skipped". Unit tests run in parallel; netns tests (network namespaces, real daemons)
// run one file at a time with a longer timeout. Usage: node test/run.js [unit|netns|fuzz ...]
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

const suites = {
  unit: { dir: "dist/test/unit", args: ["--jobs", "2", "--timeout", "300"] },
  netns: {
    dir: "dist/test/netns",
    args: ["--jobs", "1", "--timeout", "900", "--exclude", "**/helpers/**"],
  },
  fuzz: { dir: "dist/test/fuzz", args: ["--jobs", "1", "--timeout", "1800"] },
};
const wanted = process.argv.slice(2).length ? process.argv.slice(2) : ["unit", "netns"];
const total = { pass: 0, fail: 0, skip: 0 };

function run(name) {
  const s = suites[name];
  if (!s) throw new Error(`unknown suite ${name}`);
  if (!existsSync(s.dir)) {
    console.log(`# suite ${name}: ${s.dir} missing (run npm run build)`);
    total.fail++;
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const child = spawn(
      "npx",
      ["tap", "--disable-coverage", "--allow-empty-coverage", "-R", "tap", ...s.args, s.dir],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let tail = "";
    child.stdout.on("data", (d) => {
      process.stdout.write(d);
      tail = (tail + d.toString()).slice(-4096);
    });
    child.on("close", (code) => {
      const m = tail.match(/# \{ total: (\d+)([^}]*)\}/);
      if (!m) {
        console.log(`# suite ${name}: no summary from tap (exit ${code})`);
        total.fail++;
      } else {
        const field = (k) => Number((m[2].match(new RegExp(`${k}: (\\d+)`)) || [0, 0])[1]);
        total.pass += field("pass");
        total.skip += field("skip") + field("todo");
        const fail = field("fail");
        total.fail += fail;
        if (code !== 0 && fail === 0) total.fail++;
      }
      resolve();
    });
  });
}

for (const name of wanted) await run(name);
console.log(`${total.pass} passed, ${total.fail} failed, ${total.skip} skipped`);
process.exit(total.fail === 0 ? 0 : 1);
