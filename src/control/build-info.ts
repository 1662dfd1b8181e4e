/**
 * What `tunnat_build_info` says about the running code: the package version, the Node.js version
 * and, when known, the git commit. Read once at start, never on a scrape.
 *
 * The commit comes from TUNNAT_COMMIT (a packager or image build sets it), else from the .git
 * folder of a clone the daemon runs from (HEAD, a loose ref, or packed-refs); an installed
 * package has neither, and the label is then "unknown".
 */
import { readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { packageRoot } from "../io/package-root.js";

export interface BuildInfo {
  version: string;
  nodeVersion: string;
  commit: string;
}

export function buildInfo(env: NodeJS.ProcessEnv = process.env): BuildInfo {
  const root = packageRoot();
  return {
    version: packageVersion(root),
    nodeVersion: process.versions.node,
    commit:
      env.TUNNAT_COMMIT?.trim() || (root ? gitCommit(join(root, ".git")) : undefined) || "unknown",
  };
}

function packageVersion(root: string | undefined): string {
  if (!root) return "unknown";
  try {
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "unknown";
  } catch {
    return "unknown";
  }
}

const SHA = /^[0-9a-f]{40}$/;

/** The commit HEAD names in the git folder `git`, or undefined. Reads files only. */
function gitCommit(dotGit: string): string | undefined {
  try {
    let git = dotGit;
    let common = dotGit;
    // A worktree's .git is a file naming its git folder, whose refs live in the common folder.
    if (statSync(dotGit).isFile()) {
      const dir = /^gitdir: (.+)$/m.exec(readFileSync(dotGit, "utf8"))?.[1]?.trim();
      if (!dir) return undefined;
      git = resolve(dirname(dotGit), dir);
      common = git;
      try {
        common = resolve(git, readFileSync(join(git, "commondir"), "utf8").trim());
      } catch {
        // no commondir: refs are in the git folder itself
      }
    }
    const head = readFileSync(join(git, "HEAD"), "utf8").trim();
    if (SHA.test(head)) return head.slice(0, 12);
    const ref = /^ref: (\S+)$/.exec(head)?.[1];
    if (!ref) return undefined;
    try {
      const loose = readFileSync(join(common, ref), "utf8").trim();
      if (SHA.test(loose)) return loose.slice(0, 12);
    } catch {
      // not a loose ref: look in packed-refs
    }
    for (const line of readFileSync(join(common, "packed-refs"), "utf8").split("\n")) {
      const [sha, name] = line.split(" ");
      if (name === ref && sha && SHA.test(sha)) return sha.slice(0, 12);
    }
  } catch {
    // no git folder (an installed package), or one this reader does not understand
  }
  return undefined;
}
