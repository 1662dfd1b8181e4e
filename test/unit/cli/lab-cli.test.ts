/** `lab up` prints commands that work from a clone, in order; `lab down` removes only mine. */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import {
  creatorUid,
  type LabFile,
  labCommands,
  labDown,
  tunnatCommand,
} from "../../../src/cli/lab.js";

const ROOT = process.cwd();
const lab = JSON.parse(readFileSync(join(ROOT, "lab", "lab.json"), "utf8")) as LabFile;
const ns = { p1: "x-p1", p2: "x-p2", nat: "x-nat", inet: "x-inet" };

t.test(
  "lab up's commands run from a clone, with the lab's socket, in the order used",
  async (t) => {
    t.equal(tunnatCommand(ROOT), "node bin/tunnat.js", "relative inside the clone");
    t.equal(
      tunnatCommand(join(ROOT, "..", "elsewhere")),
      `node ${join(ROOT, "bin", "tunnat.js")}`,
      "absolute elsewhere",
    );
    const text = labCommands(lab, "tnlab-42", ns, ROOT);
    const sock = join(lab.stateDir, "tnlab-42.sock");
    const at = (s: string) => text.indexOf(s);
    t.ok(at(`ip netns exec x-nat node bin/tunnat.js run `) > 0, "run the daemon");
    t.ok(at(`--control-socket ${sock}`) > 0, "with the lab's socket");
    t.ok(at(`flows --socket ${sock}`) > 0, "flows gets the same socket");
    t.ok(at(`stats --socket ${sock}`) > 0, "so does stats");
    t.ok(at("run ") < at("ping") && at("ping") < at("flows") && at("flows") < at("lab down"));
    t.notMatch(
      text,
      /(^|\s)tunnat (run|flows|stats)/m,
      "never a bare tunnat, which is not on PATH",
    );
  },
);

t.test("creatorUid is the sudo user's under sudo", async (t) => {
  t.equal(creatorUid({ SUDO_UID: "1000" }), 1000);
  t.equal(creatorUid({}), process.getuid?.() ?? -1);
});

t.test("lab down without --name removes only the labs this user made", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tunnat-labown-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const labFile = join(dir, "lab.json");
  writeFileSync(labFile, JSON.stringify({ ...lab, stateDir: join(dir, "state") }));
  const { mkdirSync } = await import("node:fs");
  mkdirSync(join(dir, "state"));
  const mk = (name: string, uid?: number) => {
    const file = join(dir, "state", `${name}.json`);
    // Namespace names that do not exist: nothing of the machine is touched.
    const n = `${name}-nonexistent-${process.pid}`;
    writeFileSync(
      file,
      JSON.stringify({ name, pid: 1, uid, labFile, ns: { p1: n, p2: n, nat: n, inet: n } }),
    );
    return file;
  };
  const mine = mk("mine", 4242);
  const theirs = mk("theirs", 4343);
  const old = mk("old");
  await labDown({ labFile, print: false, uid: 4242 });
  t.notOk(existsSync(mine), "mine is removed");
  t.ok(existsSync(theirs), "another user's stays");
  t.ok(existsSync(old), "one without a recorded maker stays");
  await labDown({ labFile, print: false, name: "theirs", uid: 4242 });
  t.notOk(existsSync(theirs), "--name removes any lab");
});
