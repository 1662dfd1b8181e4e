/**
 * Who owns a state file: the process that wrote it, identified by pid *and* start time, so that a
 * pid the kernel has since given to another process (a `sleep`, a shell, another daemon) is not
 * mistaken for the owner. A live owner blocks another start and `tunnat down`; anything else is
 * dead and its leftovers may be removed.
 *
 * Start time is field 22 of /proc/PID/stat (clock ticks since boot, like ps's "START"); with the
 * pid it names one process for the life of the boot.
 */
import { readFileSync } from "node:fs";
import { createConnection } from "node:net";
import { basename } from "node:path";

/** What a state file records about its writer. */
export interface OwnerRecord {
  pid: number;
  /** /proc/PID/stat field 22 of the writer when it wrote the file (absent in old files). */
  startTime?: string;
  tun?: string;
  controlSocket?: string;
}

/** Field 22 (starttime) of /proc/PID/stat, or null when there is no such process. */
export function processStartTime(pid: number | "self", procRoot = "/proc"): string | null {
  let stat: string;
  try {
    stat = readFileSync(`${procRoot}/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // Field 2 (comm) is in parentheses and may hold spaces or ")": split after the last ")".
  const close = stat.lastIndexOf(")");
  if (close < 0) return null;
  const rest = stat.slice(close + 2).split(" ");
  // rest[0] is field 3 (state), so field 22 is rest[19].
  return rest[19] ?? null;
}

/** The record this process writes into its state files. */
export function selfRecord(tun: string, controlSocket: string | undefined): OwnerRecord {
  const rec: OwnerRecord = { pid: process.pid, tun };
  const st = processStartTime("self");
  if (st !== null) rec.startTime = st;
  if (controlSocket !== undefined) rec.controlSocket = controlSocket;
  return rec;
}

/** The value of `--flag X` or `--flag=X` in argv, if given. */
function flagValue(argv: string[], flag: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? "";
    if (a === flag) return argv[i + 1];
    if (a.startsWith(`${flag}=`)) return a.slice(flag.length + 1);
  }
  return undefined;
}

/**
 * Is the writer of `rec` still running? True only for the same process (pid and start time
 * match, when the file recorded one) that is a `tunnat run` whose explicit --tun and
 * --control-socket, if given on its command line, are the recorded ones. A cmdline that cannot be
 * read (another user's process under hidepid) counts as alive only when the start time matched.
 */
export function ownerAlive(rec: OwnerRecord, procRoot = "/proc"): boolean {
  if (!Number.isInteger(rec.pid) || rec.pid <= 0) return false;
  const st = processStartTime(rec.pid, procRoot);
  if (st === null) return false;
  const timeMatched = rec.startTime !== undefined && st === rec.startTime;
  if (rec.startTime !== undefined && !timeMatched) return false;
  let argv: string[];
  try {
    argv = readFileSync(`${procRoot}/${rec.pid}/cmdline`, "utf8").split("\0");
  } catch {
    return timeMatched;
  }
  // `node /usr/bin/tunnat run ...`, `node bin/tunnat.js run ...`, or a binary named tunnat.
  const bin = argv.findIndex((a) => /^tunnat(\.js)?$/.test(basename(a)));
  if (bin < 0 || argv[bin + 1] !== "run") return false;
  const args = argv.slice(bin + 2);
  const tun = flagValue(args, "--tun");
  if (rec.tun !== undefined && tun !== undefined && tun !== rec.tun) return false;
  const sock = flagValue(args, "--control-socket");
  if (rec.controlSocket !== undefined && sock !== undefined && sock !== rec.controlSocket)
    return false;
  return true;
}

/** Does something accept connections on the unix socket at `path`? */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}
