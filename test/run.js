#!/usr/bin/env node
// Runs the compiled test suites with node-tap and ends with the line CI reads:
// "N passed, N failed, N skipped". Unit tests run in parallel; netns tests (network namespaces,
// real daemons) run one file at a time with a longer timeout.
//
// What it prints: one line per test file (status, assertions passed/failed/skipped, time), every
// failure with its diagnostics, and each suite's totals. The full TAP stream of each suite is kept
// in dist/test-output/<suite>-node<major>.tap (TAP_OUT=DIR to put it elsewhere; TAP_ECHO=1 to
// print it as it comes, as before).
//
// Usage: node test/run.js [unit|netns|fuzz ...]
import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const suites = {
  unit: { dir: "dist/test/unit", args: ["--jobs", "2", "--timeout", "300"] },
  netns: {
    dir: "dist/test/netns",
    args: ["--jobs", "1", "--timeout", "900", "--exclude", "**/helpers/**"],
  },
  fuzz: { dir: "dist/test/fuzz", args: ["--jobs", "1", "--timeout", "1800"] },
};
const wanted = process.argv.slice(2).length ? process.argv.slice(2) : ["unit", "netns"];
const outDir = process.env.TAP_OUT || "dist/test-output";
const echo = process.env.TAP_ECHO === "1";
const major = process.versions.node.split(".")[0];
const total = { pass: 0, fail: 0, skip: 0 };

/**
 * Reads a TAP 14 stream line by line (as node-tap writes it: subtests indented by four spaces,
 * each closed by its plan line and then its own result line) and keeps, per top-level subtest
 * (one test file), the assertions passed, failed and skipped, and the failures' text.
 */
export class TapDigest {
  constructor() {
    this.files = [];
    this.file = null;
    /** Subtest names by depth, for naming a failure by its path. */
    this.names = [];
    /** By depth: whether a failure below was already reported (so a parent is not repeated). */
    this.failedBelow = [];
    /** The lines of the failure being collected (its YAML diagnostics follow its result line). */
    this.collect = null;
    this.prevPlanDepth = -1;
  }

  line(raw) {
    const indent = raw.length - raw.trimStart().length;
    const text = raw.trim();
    const depth = Math.floor(indent / 4);
    if (this.collect) {
      if (text !== "" && indent > this.collect.indent) {
        this.collect.lines.push(raw.slice(this.collect.indent));
        return;
      }
      this.collect = null;
    }
    if (text === "") return;
    const sub = text.match(/^# Subtest: (.*)$/);
    if (sub) {
      this.names[depth] = sub[1];
      this.names.length = depth + 1;
      this.failedBelow[depth + 1] = false;
      if (depth === 0) {
        this.file = { name: sub[1], pass: 0, fail: 0, skip: 0, ok: true, time: "", failures: [] };
        this.files.push(this.file);
      }
      this.prevPlanDepth = -1;
      return;
    }
    if (/^1\.\.\d+/.test(text)) {
      this.prevPlanDepth = depth;
      return;
    }
    const res = text.match(/^(not )?ok \d+( - ([^#]*))?(#\s*(.*))?$/);
    if (!res) {
      // Comments (such as a subtest's "# time=") between its plan and its result are kept out.
      if (!text.startsWith("#")) this.prevPlanDepth = -1;
      return;
    }
    const failed = Boolean(res[1]);
    const directive = (res[5] || "").trim();
    // A result closes a subtest when the plan just before it sits one level deeper.
    const closesSubtest = this.prevPlanDepth === depth + 1;
    this.prevPlanDepth = -1;
    if (closesSubtest) {
      if (depth === 0 && this.file) {
        this.file.ok = !failed;
        this.file.time = (directive.match(/time=([\d.]+m?s)/) || ["", ""])[1];
      }
      const below = this.failedBelow[depth + 1];
      this.failedBelow[depth + 1] = false;
      if (failed) {
        if (!below) this.startFailure(indent, depth, res[3]);
        this.failedBelow[depth] = true;
      }
      return;
    }
    if (!this.file) return;
    if (/^(skip|todo)\b/i.test(directive)) this.file.skip++;
    else if (failed) {
      this.file.fail++;
      this.failedBelow[depth] = true;
      this.startFailure(indent, depth, res[3]);
    } else this.file.pass++;
  }

  startFailure(indent, depth, name) {
    const path = this.names.slice(0, depth).join(" > ");
    const f = { where: path, what: (name || "").trim(), lines: [] };
    (this.file || { failures: [] }).failures.push(f);
    this.collect = { indent, lines: f.lines };
  }
}

function printDigest(name, digest) {
  for (const f of digest.files) {
    const status = f.ok && f.fail === 0 ? "ok     " : "FAILED ";
    const counts = `${f.pass} passed${f.fail ? `, ${f.fail} failed` : ""}${f.skip ? `, ${f.skip} skipped` : ""}`;
    console.log(`${status} ${f.name}  (${counts}${f.time ? `, ${f.time}` : ""})`);
  }
  const failures = digest.files.flatMap((f) => f.failures.map((x) => ({ file: f.name, ...x })));
  if (failures.length) {
    console.log(`\n# ${name}: ${failures.length} failure(s)`);
    for (const f of failures) {
      console.log(`\nnot ok - ${f.what}\n  in: ${f.where || f.file}`);
      for (const l of f.lines.slice(0, 40)) console.log(`  ${l}`);
      if (f.lines.length > 40)
        console.log(`  ... (${f.lines.length - 40} more lines in the TAP file)`);
    }
    console.log("");
  }
}

function run(name) {
  const s = suites[name];
  if (!s) throw new Error(`unknown suite ${name}`);
  if (!existsSync(s.dir)) {
    console.log(`# suite ${name}: ${s.dir} missing (run npm run build)`);
    total.fail++;
    return Promise.resolve();
  }
  mkdirSync(outDir, { recursive: true });
  const tapFile = join(outDir, `${name}-node${major}.tap`);
  const out = createWriteStream(tapFile);
  console.log(`# suite ${name}: ${s.dir} (full TAP: ${tapFile})`);
  return new Promise((resolve) => {
    const child = spawn(
      "npx",
      ["tap", "--disable-coverage", "--allow-empty-coverage", "-R", "tap", ...s.args, s.dir],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const digest = new TapDigest();
    let tail = "";
    let partial = "";
    child.stdout.on("data", (d) => {
      out.write(d);
      if (echo) process.stdout.write(d);
      const chunk = partial + d.toString();
      const lines = chunk.split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) digest.line(l);
      tail = (tail + d.toString()).slice(-4096);
    });
    child.on("close", (code) => {
      if (partial) digest.line(partial);
      out.end();
      if (!echo) printDigest(name, digest);
      const m = tail.match(/# \{ total: (\d+)([^}]*)\}/);
      if (!m) {
        console.log(`# suite ${name}: no summary from tap (exit ${code}); see ${tapFile}`);
        total.fail++;
      } else {
        const field = (k) => Number((m[2].match(new RegExp(`${k}: (\\d+)`)) || [0, 0])[1]);
        const pass = field("pass");
        const skip = field("skip") + field("todo");
        const fail = field("fail");
        total.pass += pass;
        total.skip += skip;
        total.fail += fail;
        if (code !== 0 && fail === 0) total.fail++;
        console.log(
          `# suite ${name}: ${pass} passed, ${fail} failed, ${skip} skipped in ${digest.files.length} files`,
        );
      }
      resolve();
    });
  });
}

// Imported by its own unit test for TapDigest: run only as a script.
if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const name of wanted) await run(name);
  console.log(`${total.pass} passed, ${total.fail} failed, ${total.skip} skipped`);
  process.exit(total.fail === 0 ? 0 : 1);
}
