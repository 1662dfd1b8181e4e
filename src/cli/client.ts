/**
 * What the verbs that ask a running daemon (flows, stats) share: the --socket and --json flags,
 * and a first look at the socket path that tells "not running" from "not allowed".
 */
import { statSync } from "node:fs";
import type { Argv } from "yargs";

export function clientOptions(y: Argv): Argv {
  return y
    .option("socket", {
      type: "string",
      describe: "control socket [env TUNNAT_CONTROL_SOCKET] (default /run/tunnat/tunnat.sock)",
    })
    .option("json", { type: "boolean", describe: "JSON output" });
}

/** The control socket's path, or undefined after saying why it cannot be reached. */
export function reachableSocket(argv: Record<string, unknown>): string | undefined {
  const socket = String(
    argv.socket ?? process.env.TUNNAT_CONTROL_SOCKET ?? "/run/tunnat/tunnat.sock",
  );
  try {
    statSync(socket);
  } catch (e) {
    // existsSync() would also say "no" for a socket this user may not reach (EACCES).
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM")
      process.stderr.write(
        `tunnat: permission denied on ${socket}: use root, or a member of the daemon's --control-socket-group (the unit's: tunnat) (TUNNAT_ERR_CONTROL)\n`,
      );
    else
      process.stderr.write(`tunnat: daemon not reachable at ${socket} (TUNNAT_ERR_NOT_RUNNING)\n`);
    return undefined;
  }
  return socket;
}
