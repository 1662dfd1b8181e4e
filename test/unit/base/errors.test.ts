import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { ErrorCode, exitCodeFor, TunnatError } from "../../../src/base/errors.js";

const docs = readFileSync(join(process.cwd(), "docs", "errors.md"), "utf8");

t.test("every error code in errors.ts is documented in docs/errors.md", async (t) => {
  const codes = Object.values(ErrorCode);
  t.ok(codes.length >= 5);
  for (const code of codes) t.match(docs, `\`${code}\``, `${code} is documented`);
});

t.test("docs/errors.md documents no code that errors.ts lacks", async (t) => {
  const documented = new Set(docs.match(/TUNNAT_ERR_[A-Z_]+/g) ?? []);
  for (const code of documented) t.ok(Object.values(ErrorCode).includes(code as ErrorCode), code);
});

t.test("a TunnatError carries its code and configuration errors exit with 2", async (t) => {
  const e = new TunnatError(ErrorCode.Plumbing, "x");
  t.equal(e.code, "TUNNAT_ERR_PLUMBING");
  t.ok(e instanceof Error);
  t.equal(exitCodeFor(ErrorCode.Config), 2);
  t.equal(exitCodeFor(ErrorCode.ConfigFile), 2);
  t.equal(exitCodeFor(ErrorCode.Plumbing), 1);
});
