/**
 * How the control plane reaches the kernel: `ip`, `nft` and sysctls, run with execFile (never a
 * shell), in the host's network namespace or, for tests and the lab, in a named one.
 */
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";

/** A failed external command. */
export class CommandError extends Error {
  constructor(
    readonly argv: string[],
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(`"${argv.join(" ")}" failed: ${stderr.trim() || `exit code ${exitCode}`}`);
    this.name = "CommandError";
  }
}

/** How commands reach the kernel: the host's namespace, or a named one (tests, the lab). */
export interface Runner {
  /** Run `ip ARGS`; resolves with stdout, rejects with CommandError. */
  ip(args: string[]): Promise<string>;
  /** Run `nft ARGS` with `input` on stdin (for `nft -f -`); rejects with CommandError. */
  nft(args: string[], input?: string): Promise<string>;
  /** Read a sysctl by slash path ("net/ipv4/ip_forward"); slashes keep dotted ifnames intact. */
  readSysctl(key: string): Promise<string>;
  writeSysctl(key: string, value: string): Promise<void>;
  /** Shown in messages: "" for the host, " (netns X)" otherwise. */
  readonly where: string;
}

export function execCommand(
  file: string,
  args: string[],
  timeoutMs = 10_000,
  input?: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { timeout: timeoutMs, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === "number" ? err.code : null;
          // A command killed by a signal has no stderr: say which signal (e.g. a service manager
          // that signals the whole group).
          const why = err.signal ? `killed by ${err.signal}` : err.message;
          reject(new CommandError([file, ...args], stderr || why, code));
        } else resolve(stdout);
      },
    );
    // A command that exits before reading its input must not surface as an EPIPE crash.
    child.stdin?.on("error", () => undefined);
    if (input !== undefined) child.stdin?.end(input);
    else child.stdin?.end();
  });
}

export function hostRunner(): Runner {
  return {
    where: "",
    ip: (args) => execCommand("ip", args),
    nft: (args, input) => execCommand("nft", args, 10_000, input),
    readSysctl: async (key) => (await readFile(`/proc/sys/${key}`, "utf8")).trim(),
    writeSysctl: (key, value) => writeFile(`/proc/sys/${key}`, value),
  };
}

/** Commands inside network namespace `ns` (ip -n NS; nft and sysctl through ip netns exec). */
export function netnsRunner(ns: string): Runner {
  return {
    where: ` (netns ${ns})`,
    ip: (args) => execCommand("ip", ["-n", ns, ...args]),
    nft: (args, input) => execCommand("ip", ["netns", "exec", ns, "nft", ...args], 10_000, input),
    readSysctl: async (key) =>
      (await execCommand("ip", ["netns", "exec", ns, "sysctl", "-n", key])).trim(),
    writeSysctl: async (key, value) => {
      await execCommand("ip", ["netns", "exec", ns, "sysctl", "-q", "-w", `${key}=${value}`]);
    },
  };
}
