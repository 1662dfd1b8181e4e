/** The man page is generated from the CLI definitions and the checked-in one is current. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { manPage } from "../../../src/cli/man.js";

t.test("man/tunnat.1 is what npm run man produces now", async (t) => {
  const page = await manPage();
  t.match(page, /^\.TH TUNNAT 1/);
  for (const v of ["run", "check", "status", "flows", "stats", "lab up", "lab down", "completion"])
    t.match(page, new RegExp(`\\.SS tunnat ${v}\\n`), `a section for ${v}`);
  t.match(page, /\\-\\-nat 203\.0\.113\.1:41234/, "with the examples");
  const file = readFileSync(join(process.cwd(), "man", "tunnat.1"), "utf8");
  t.equal(file, page, "man/tunnat.1 is current (run npm run man and commit it)");
  const pkg = JSON.parse(readFileSync(join(process.cwd(), "package.json"), "utf8")) as {
    files: string[];
    man?: string[];
  };
  t.ok(pkg.files.includes("man"), "the package ships it");
  t.same(pkg.man, ["./man/tunnat.1"], "and npm installs it as a man page");
});
