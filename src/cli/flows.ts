/**
 * `tunnat flows`: the running daemon's flows, in the manner of `conntrack -L` (original
 * direction, then the reply direction as seen on the outside), or one JSON object per line with
 * --json. Filters run in the daemon, so only matches cross the socket: --host (inside address),
 * --dst (remote address[:port]), --nat (outside address[:port]: "who was 203.0.113.1:41234?"),
 * --proto, --state. --sort bytes|age orders them (largest, oldest first); --count prints only
 * how many match. Bytes are human-readable (1.5 MiB) unless --raw.
 *
 * --follow streams create and destroy events as `conntrack -E` does; --delete removes the
 * matching flows as `conntrack -D` does (their ports then rest as after an expiry).
 */
import { PROTOCOL_NAMES, protocolByName } from "../base/protocols.js";
import { request, stream } from "../control/control-client.js";
import type { FlowFilter, FlowRecord } from "../control/control-protocol.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";
import { humanBytes, humanSeconds, numberOption } from "./format.js";

export interface FlowShow {
  /** Exact byte counts instead of 1.5 MiB. */
  raw?: boolean;
}

/** One flow as `conntrack -L` prints it (with accounting on). */
export function formatFlow(r: FlowRecord, opts: FlowShow = {}): string {
  const num = protocolByName(r.proto)?.number ?? 0;
  // Below 1 KiB the exact count, as conntrack prints it; above, 1.5KiB (exact with --raw).
  const bytes = (n: number) => (opts.raw || n < 1024 ? String(n) : humanBytes(n).replace(" ", ""));
  const head = `${r.proto.padEnd(8)} ${num} ${String(r.timeout).padStart(6)} ${r.proto === "tcp" ? r.state.padEnd(11) : "".padEnd(11)}`;
  const ports = (sport: number, dport: number, reply: boolean) =>
    r.proto === "icmp"
      ? `type=${reply ? 0 : 8} code=0 id=${sport}`
      : `sport=${sport} dport=${dport}`;
  const orig = `src=${r.insideAddr} dst=${r.remoteAddr} ${ports(r.insidePort, r.remotePort, false)} packets=${r.pktsOut} bytes=${bytes(r.bytesOut)}`;
  const reply = `src=${r.remoteAddr} dst=${r.outsideAddr} ${r.proto === "icmp" ? ports(r.outsidePort, 0, true) : ports(r.remotePort, r.outsidePort, true)} packets=${r.pktsIn} bytes=${bytes(r.bytesIn)}`;
  const age = r.age === undefined ? "" : ` age=${opts.raw ? r.age : humanSeconds(r.age)}`;
  return `${head} ${orig}${r.replied ? "" : " [UNREPLIED]"} ${reply}${r.replied ? " [ASSURED]" : ""}${age}`;
}

/** The header above the listing: what each leading column is. */
export const FLOWS_HEADER = `${"PROTO".padEnd(8)} # ${"TTL(s)".padStart(6)} ${"STATE".padEnd(11)} ORIGINAL (inside -> remote)  REPLY (remote -> outside)`;

/** One event as `conntrack -E` prints it: [NEW] or [DESTROY], then the flow. */
export function formatEvent(e: Record<string, unknown>, opts: FlowShow = {}): string {
  const tag = e.event === "new" ? "[NEW]" : "[DESTROY]";
  const r = { timeout: 0, replied: Number(e.pktsIn) > 0, ...e } as unknown as FlowRecord;
  const life =
    e.lifetime === undefined
      ? ""
      : ` lifetime=${opts.raw ? String(e.lifetime) : humanSeconds(Number(e.lifetime))}`;
  return `${String(e.time)} ${tag.padEnd(9)} ${formatFlow(r, opts)}${life}`;
}

export type SortKey = "bytes" | "age";

/** Order flows: bytes = most bytes (both ways) first; age = oldest first. */
export function sortFlows(rows: FlowRecord[], key: SortKey): FlowRecord[] {
  const total = (r: FlowRecord) => r.bytesOut + r.bytesIn;
  return key === "bytes"
    ? rows.sort((a, b) => total(b) - total(a))
    : rows.sort((a, b) => (b.age ?? 0) - (a.age ?? 0));
}

/** The daemon-side filter of the flags. */
export function filterOf(argv: Record<string, unknown>): FlowFilter {
  const filter: FlowFilter = {};
  if (argv.host !== undefined) filter.host = String(argv.host);
  if (argv.dst !== undefined) filter.dst = String(argv.dst);
  if (argv.nat !== undefined) filter.nat = String(argv.nat);
  if (argv.proto !== undefined) filter.proto = String(argv.proto) as FlowFilter["proto"];
  if (argv.state !== undefined) filter.state = String(argv.state);
  return filter;
}

const out = (s: string) => process.stdout.write(s);

async function listFlows(socket: string, argv: Record<string, unknown>): Promise<number> {
  const filter = filterOf(argv);
  const sort = argv.sort as SortKey | undefined;
  const limit = argv.limit === undefined ? undefined : Number(argv.limit);
  // Sorting needs every match first; without it the daemon stops at the limit.
  if (limit !== undefined && sort === undefined) filter.limit = limit;
  if (argv.count === true) filter.limit = undefined;
  const json = argv.json === true;
  const show: FlowShow = { raw: argv.raw === true };
  const rows: FlowRecord[] = [];
  const lines: string[] = [];
  let matched = 0;
  let headed = false;
  const flush = () => {
    if (!json && !headed && lines.length > 0 && argv.header !== false) {
      out(`${FLOWS_HEADER}\n`);
      headed = true;
    }
    if (lines.length) out(`${lines.join("\n")}\n`);
    lines.length = 0;
  };
  await request(socket, { cmd: "flows", ...filter }, (obj) => {
    if (obj.type === "flow") {
      if (argv.count === true) return;
      const r = obj as unknown as FlowRecord;
      if (sort) rows.push(r);
      else {
        lines.push(json ? JSON.stringify(r) : formatFlow(r, show));
        if (lines.length >= 1024) flush();
      }
    } else if (obj.type === "end") matched = Number(obj.matched);
  });
  if (argv.count === true) {
    out(json ? `${JSON.stringify({ count: matched })}\n` : `${matched}\n`);
    return 0;
  }
  if (sort) {
    const sorted = sortFlows(rows, sort).slice(0, limit ?? rows.length);
    for (const r of sorted) lines.push(json ? JSON.stringify(r) : formatFlow(r, show));
    matched = sorted.length;
  }
  flush();
  if (!json) process.stderr.write(`tunnat: ${matched} flow entries have been shown.\n`);
  return 0;
}

async function deleteFlows(socket: string, argv: Record<string, unknown>): Promise<number> {
  const filter = filterOf(argv);
  if (
    filter.host === undefined &&
    filter.dst === undefined &&
    filter.nat === undefined &&
    argv.all !== true
  ) {
    process.stderr.write(
      "tunnat: --delete needs --host, --dst or --nat to choose flows, or --all for every flow\n",
    );
    return 2;
  }
  let deleted = 0;
  await request(socket, { cmd: "delete", ...filter, all: argv.all === true }, (obj) => {
    if (obj.type === "end") deleted = Number(obj.deleted);
  });
  if (argv.json === true) out(`${JSON.stringify({ deleted })}\n`);
  else process.stderr.write(`tunnat: ${deleted} flow entries have been deleted.\n`);
  return 0;
}

async function followFlows(socket: string, argv: Record<string, unknown>): Promise<number> {
  const json = argv.json === true;
  const show: FlowShow = { raw: argv.raw === true };
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  // `tunnat flows --follow | head` closes stdout: stop then, like conntrack -E.
  process.stdout.once("error", stop);
  const limit = argv.limit === undefined ? Number.POSITIVE_INFINITY : Number(argv.limit);
  let n = 0;
  try {
    await stream(
      socket,
      { cmd: "follow", ...filterOf(argv) },
      (obj) => {
        if (obj.type === "following")
          process.stderr.write("tunnat: following flow events (Ctrl-C to stop)\n");
        if (obj.type === "lost")
          process.stderr.write(`tunnat: ${String(obj.count)} events missed (reader too slow)\n`);
        if (obj.type !== "event") return;
        out(`${json ? JSON.stringify(obj) : formatEvent(obj, show)}\n`);
        if (++n >= limit) ac.abort();
      },
      ac.signal,
    );
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
  return 0;
}

export const flows: Command = {
  command: "flows",
  describe: "list, follow or delete the running daemon's flows (conntrack -L, -E, -D)",
  builder: (y) =>
    numberOption(
      clientOptions(y)
        .option("host", { type: "string", describe: "only flows of this inside host (ADDR)" })
        .option("dst", {
          type: "string",
          describe: "only flows to this remote address (ADDR or ADDR:PORT)",
        })
        .option("nat", {
          type: "string",
          describe: "only flows on this outside (NAT) address (ADDR or ADDR:PORT)",
        })
        .option("proto", { choices: PROTOCOL_NAMES, describe: "only this protocol" })
        .option("state", {
          type: "string",
          describe: "only flows in this state (TCP state name, or REPLIED/UNREPLIED)",
        })
        .option("sort", {
          choices: ["bytes", "age"],
          describe: "order: bytes = most bytes first, age = oldest first",
        })
        .option("count", { type: "boolean", describe: "print only how many flows match" })
        .option("raw", { type: "boolean", describe: "exact byte counts and seconds" })
        .option("header", {
          type: "boolean",
          default: true,
          describe: "print the column header (--no-header to leave it out)",
        })
        .option("follow", {
          alias: "f",
          type: "boolean",
          describe: "stream flow create/destroy events until interrupted (conntrack -E)",
        })
        .option("delete", {
          alias: "D",
          type: "boolean",
          describe: "delete the matching flows (conntrack -D); needs a filter or --all",
        })
        .option("all", { type: "boolean", describe: "with --delete: every flow" })
        .conflicts("follow", ["delete", "count", "sort"])
        .conflicts("delete", ["count", "sort"]),
      "limit",
      { describe: "show at most this many flows (with --follow: events)", min: 0 },
    )
      .example("$0 flows --nat 203.0.113.1:41234", "who holds this outside address and port?")
      .example("$0 flows --host 10.0.1.2 --sort bytes --limit 10", "a host's ten largest flows")
      .example("$0 flows --proto tcp --state ESTABLISHED --count", "count established TCP flows")
      .example("$0 flows --follow --dst 198.51.100.7", "watch flows to one destination come and go")
      .example("$0 flows --delete --host 10.0.1.2", "end every flow of one inside host"),
  async run(argv) {
    const socket = reachableSocket(argv);
    if (socket === undefined) return 1;
    if (argv.delete === true) return deleteFlows(socket, argv);
    if (argv.follow === true) return followFlows(socket, argv);
    return listFlows(socket, argv);
  },
};
