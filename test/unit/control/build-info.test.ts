import { execFileSync } from "node:child_process";
import t from "tap";
import { buildInfo } from "../../../src/control/build-info.js";

t.test(
  "build info: version from package.json, Node's version, the commit when known",
  async (t) => {
    const b = buildInfo({ TUNNAT_COMMIT: "0123456789ab" });
    t.match(b.version, /^\d+\.\d+\.\d+/);
    t.equal(b.nodeVersion, process.versions.node);
    t.equal(b.commit, "0123456789ab", "TUNNAT_COMMIT wins");
    let head: string | null = null;
    try {
      head = execFileSync("git", ["rev-parse", "HEAD"], { encoding: "utf8" }).trim();
    } catch {
      // not a git checkout (an unpacked package): the commit is unknown
    }
    const fromGit = buildInfo({}).commit;
    if (head) t.equal(fromGit, head.slice(0, 12), "read from the clone's .git without running git");
    else t.equal(fromGit, "unknown");
  },
);
