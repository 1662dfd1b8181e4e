#!/usr/bin/env node
// The compiled CLI lives in dist/ (npm run build).
import { main } from "../dist/src/cli/main.js";

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`tunnat: ${e?.stack ?? e}\n`);
    process.exitCode = 1;
  },
);
