/**
 * `tunnat ha role STATE` and `tunnat ha status`: tell the running daemon its role in an HA pair
 * (keepalived's notify script may call `tunnat ha role $3` with MASTER, BACKUP, FAULT or STOP; the
 * notify FIFO does the same without a process per transition), or print the pair's state.
 */
import { request } from "../control/control-client.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";
import { formatStats } from "./stats.js";

async function haCommand(argv: Record<string, unknown>, state?: string): Promise<number> {
  const socket = reachableSocket(argv);
  if (socket === undefined) return 1;
  let out: Record<string, unknown> = {};
  await request(
    socket,
    state === undefined ? { cmd: "ha", action: "status" } : { cmd: "ha", action: "role", state },
    (obj) => {
      if (obj.type === "ha") out = obj.ha as Record<string, unknown>;
    },
  );
  process.stdout.write(
    argv.json === true ? `${JSON.stringify(out, null, 2)}\n` : formatStats({ ha: out }),
  );
  return 0;
}

export const ha: Command = {
  command: "ha",
  describe: "an HA pair's gateway: its role and sync state (docs/ha.md)",
  subcommands: [
    {
      command: "role <state>",
      describe: "set the role: active | standby, or keepalived's MASTER | BACKUP | FAULT | STOP",
      builder: (y) => clientOptions(y).positional("state", { type: "string" }),
      run: (argv) => haCommand(argv, String(argv.state)),
    },
    {
      command: "status",
      describe: "print the role, the peer and the sync counters",
      builder: clientOptions,
      run: (argv) => haCommand(argv),
    },
  ],
};
