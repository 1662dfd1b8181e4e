/**
 * `tunnat ha role STATE` and `tunnat ha status`: tell the running daemon its role in an HA pair
 * (keepalived's notify script calls `tunnat ha role $3` with MASTER, BACKUP, FAULT or STOP), or
 * print the pair's state.
 */
import { request } from "../control/control-socket.js";
import { formatStats } from "./stats.js";

export async function haCommand(argv: Record<string, unknown>): Promise<number> {
  const action = argv.state === undefined ? "status" : "role";
  let out: Record<string, unknown> = {};
  await request(
    String(argv.socket),
    { cmd: "ha", action, ...(argv.state !== undefined ? { state: String(argv.state) } : {}) },
    (obj) => {
      if (obj.type === "ha") out = obj.ha as Record<string, unknown>;
    },
  );
  process.stdout.write(
    argv.json === true ? `${JSON.stringify(out, null, 2)}\n` : formatStats({ ha: out }),
  );
  return 0;
}
