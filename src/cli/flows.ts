/**
 * `tunnat flows`: the running daemon's flows, one per line in the manner of `conntrack -L`
 * (original direction, then the reply direction as seen on the outside), or as JSON lines with
 * --json. Filters (--host, --proto, --state, --limit) run in the daemon, so only matches cross
 * the socket.
 */
import { PROTOCOL_NAMES, protocolByName } from "../base/protocols.js";
import { request } from "../control/control-client.js";
import type { FlowFilter, FlowRecord } from "../control/control-protocol.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";

/** One flow as `conntrack -L` prints it (with accounting on). */
export function formatFlow(r: FlowRecord): string {
  const num = protocolByName(r.proto)?.number ?? 0;
  const head = `${r.proto.padEnd(8)} ${num} ${r.timeout}${r.proto === "tcp" ? ` ${r.state}` : ""}`;
  const ports = (sport: number, dport: number, reply: boolean) =>
    r.proto === "icmp"
      ? `type=${reply ? 0 : 8} code=0 id=${sport}`
      : `sport=${sport} dport=${dport}`;
  const orig = `src=${r.insideAddr} dst=${r.remoteAddr} ${ports(r.insidePort, r.remotePort, false)} packets=${r.pktsOut} bytes=${r.bytesOut}`;
  const reply = `src=${r.remoteAddr} dst=${r.outsideAddr} ${r.proto === "icmp" ? ports(r.outsidePort, 0, true) : ports(r.remotePort, r.outsidePort, true)} packets=${r.pktsIn} bytes=${r.bytesIn}`;
  return `${head} ${orig}${r.replied ? "" : " [UNREPLIED]"} ${reply}${r.replied ? " [ASSURED]" : ""}`;
}

async function flowsCommand(argv: Record<string, unknown>): Promise<number> {
  const filter: FlowFilter = {};
  if (argv.host !== undefined) filter.host = String(argv.host);
  if (argv.proto !== undefined) filter.proto = String(argv.proto) as FlowFilter["proto"];
  if (argv.state !== undefined) filter.state = String(argv.state);
  if (argv.limit !== undefined) filter.limit = Number(argv.limit);
  const json = argv.json === true;
  const out: string[] = [];
  let matched = 0;
  const flush = () => {
    if (out.length) process.stdout.write(`${out.join("\n")}\n`);
    out.length = 0;
  };
  await request(String(argv.socket), { cmd: "flows", ...filter }, (obj) => {
    if (obj.type === "flow") {
      out.push(json ? JSON.stringify(obj) : formatFlow(obj as unknown as FlowRecord));
      if (out.length >= 1024) flush();
    } else if (obj.type === "end") matched = Number(obj.matched);
  });
  flush();
  if (!json) process.stderr.write(`tunnat: ${matched} flow entries have been shown.\n`);
  return 0;
}

export const flows: Command = {
  command: "flows",
  describe: "list the running daemon's flows",
  builder: (y) =>
    clientOptions(y)
      .option("host", { type: "string", describe: "only flows of this inside host" })
      .option("proto", { choices: PROTOCOL_NAMES, describe: "only this protocol" })
      .option("state", {
        type: "string",
        describe: "only flows in this state (TCP state name, or REPLIED/UNREPLIED)",
      })
      .option("limit", { type: "number", describe: "show at most this many flows" }),
  async run(argv) {
    const socket = reachableSocket(argv);
    return socket === undefined ? 1 : flowsCommand({ ...argv, socket });
  },
};
