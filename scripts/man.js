#!/usr/bin/env node
// Write man/tunnat.1 from the CLI's own definitions (src/cli/man.ts). Run after `npm run build`;
// `npm run man` does both. `--check` exits 1 when the checked-in page is not current.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { manPage } = await import(join(root, "dist", "src", "cli", "man.js"));
const file = join(root, "man", "tunnat.1");
const page = await manPage();
if (process.argv.includes("--check")) {
  let old = "";
  try {
    old = readFileSync(file, "utf8");
  } catch {}
  if (old !== page) {
    process.stderr.write("man/tunnat.1 is not current: run npm run man and commit it\n");
    process.exit(1);
  }
} else {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, page);
  process.stdout.write(`wrote ${file}\n`);
}
