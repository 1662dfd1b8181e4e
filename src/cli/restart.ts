/**
 * `tunnat restart`: a handover restart of the running daemon (control/handover.ts,
 * docs/operations.md §Restart). The daemon starts a new process of the installed tunnat with the
 * same settings and hands it the TUN, the plumbing and the table: no route, rule or neighbour
 * entry is removed, packets wait in the TUN's queue for the few milliseconds the table takes to
 * move, and every connection keeps its outside port. This is how to upgrade tunnat in place;
 * settings that shape the kernel state (interfaces, prefixes, NAT addresses, the TUN) need a
 * full restart. Waits until the new process answers on the control socket.
 */
import { request } from "../control/control-client.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";

/** Is `pid` running? (EPERM: it is, as another user.) */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function restartCommand(argv: Record<string, unknown>, socket: string): Promise<number> {
  const timeoutMs = Number(argv.timeout ?? 60) * 1000;
  const t0 = Date.now();
  let ans: Record<string, unknown> = {};
  await request(socket, { cmd: "restart" }, (obj) => {
    ans = obj;
  });
  const old = Number(ans.pid);
  const successor = Number(ans.successor);
  // The successor answers on the control socket once it forwards.
  while (Date.now() - t0 < timeoutMs) {
    await sleep(50);
    let pid = 0;
    try {
      await request(
        socket,
        { cmd: "stats" },
        (obj) => {
          const g = (obj.stats as { gateway?: { pid?: unknown } } | undefined)?.gateway;
          pid = Number(g?.pid ?? 0);
        },
        2000,
      );
    } catch {
      // between the old daemon's socket and the new one's
    }
    if (pid === successor) {
      const ms = Date.now() - t0;
      process.stdout.write(
        argv.json === true
          ? `${JSON.stringify({ pid: old, successor, ms })}\n`
          : `tunnat restart: pid ${old} handed over to pid ${successor} (${ms} ms)\n`,
      );
      return 0;
    }
    if (!alive(successor)) {
      process.stderr.write(
        `tunnat restart: the new process (pid ${successor}) exited before taking over; ${alive(old) ? `pid ${old} goes on forwarding` : `pid ${old} has exited too`} (see the daemon's log) (TUNNAT_ERR_CONTROL)\n`,
      );
      return 1;
    }
  }
  process.stderr.write(
    `tunnat restart: pid ${successor} did not answer on ${socket} within ${timeoutMs / 1000} s (TUNNAT_ERR_CONTROL)\n`,
  );
  return 1;
}

export const restart: Command = {
  command: "restart",
  describe:
    "hand the running daemon over to a new process (same settings, code as installed) without dropping a packet",
  builder: (y) =>
    clientOptions(y).option("timeout", {
      type: "number",
      describe: "seconds to wait for the new process to forward",
      default: 60,
    }),
  examples: [["$0 restart", "upgrade in place: every connection keeps going"]],
  async run(argv) {
    const socket = reachableSocket(argv);
    return socket === undefined ? 1 : restartCommand(argv, socket);
  },
};
