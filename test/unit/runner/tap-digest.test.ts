// The test runner (test/run.js) prints a line per test file and the failures, not the raw TAP:
// its TAP reader must count every assertion and name every failure exactly once.
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import t from "tap";

interface FileDigest {
  name: string;
  pass: number;
  fail: number;
  skip: number;
  ok: boolean;
  time: string;
  failures: { where: string; what: string; lines: string[] }[];
}
interface Digest {
  files: FileDigest[];
  line(l: string): void;
}

const root = join(import.meta.dirname, "../../../..");
const { TapDigest } = (await import(pathToFileURL(join(root, "test/run.js")).href)) as {
  TapDigest: new () => Digest;
};

const STREAM = `TAP version 14
1..2
# Subtest: dist/test/unit/a.test.js
    # Subtest: first
        ok 1 - should be equal
        ok 2 - skipped one # SKIP not here
        1..2
    ok 1 - first # time=1ms
    
    # Subtest: second
        ok 1 - fine
        not ok 2 - should be equal
          ---
          found: 1
          wanted: 2
          ...
        
        ok 3 - after
        1..3
    not ok 2 - second # time=2ms
    
    1..2
not ok 1 - dist/test/unit/a.test.js # time=30.5ms

# Subtest: dist/test/unit/b.test.js
    # Subtest: times out
        ok 1 - started
        1..1
    not ok 1 - times out # time=900ms
      ---
      message: timeout!
      ...
    
    1..1
not ok 2 - dist/test/unit/b.test.js # time=901ms

# { total: 6, pass: 3, fail: 2, skip: 1 }
`;

t.test("counts each file's assertions and names each failure once", async (t) => {
  const d = new TapDigest();
  for (const l of STREAM.split("\n")) d.line(l);
  t.equal(d.files.length, 2);
  const [a, b] = d.files as [FileDigest, FileDigest];
  t.match(a, {
    name: "dist/test/unit/a.test.js",
    pass: 3,
    fail: 1,
    skip: 1,
    ok: false,
    time: "30.5ms",
  });
  t.equal(a.failures.length, 1, "the failed assertion, not its parents again");
  t.equal(a.failures[0]!.what, "should be equal");
  t.equal(a.failures[0]!.where, "dist/test/unit/a.test.js > second");
  t.ok(
    a.failures[0]!.lines.some((l) => l.includes("wanted: 2")),
    "its diagnostics are kept",
  );
  t.match(b, { pass: 1, fail: 0, ok: false });
  t.equal(b.failures.length, 1, "a subtest failing without a failed assertion is reported");
  t.equal(b.failures[0]!.what, "times out");
  t.ok(b.failures[0]!.lines.some((l) => l.includes("timeout!")));
});

t.test("a passing file is ok with no failures", async (t) => {
  const d = new TapDigest();
  for (const l of "# Subtest: x.js\n    ok 1 - y\n    1..1\nok 1 - x.js # time=3ms\n".split("\n"))
    d.line(l);
  t.match(d.files, [{ name: "x.js", pass: 1, fail: 0, ok: true, failures: [] }]);
});
