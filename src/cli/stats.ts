/**
 * `tunnat stats`: the running daemon's counters, grouped and aligned for reading, or the raw
 * snapshot with --json (the same numbers /metrics exports, without Prometheus).
 *
 * Naming: every key is camelCase (bytesOutToDestination, tcpNoFlow, droppedToDaemon), in the
 * text and in --json alike; a drop reason's Prometheus label value is its snake_case spelling
 * (tcp_no_flow). Units: a key with "bytes" in it counts bytes (shown as KiB, MiB, ...), one
 * ending in "Seconds" counts seconds; the rest are counts (shown as 1.2k, 3.4M). --raw prints the
 * exact numbers; --json always does.
 */
import { request } from "../control/control-client.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";
import { humanByName } from "./format.js";

/** A value in a group: a list of setting changes reads "field old -> new", anything else as JSON. */
function show(x: unknown, key = "", raw = true): string {
  if (typeof x === "number" && !raw) return humanByName(key, x);
  if (Array.isArray(x)) {
    if (x.length === 0) return "none";
    return x
      .map((c: unknown) =>
        c !== null && typeof c === "object" && "field" in c
          ? `${String((c as Record<string, unknown>).field)} ${String((c as Record<string, unknown>).old)} -> ${String((c as Record<string, unknown>).new)}`
          : typeof c === "string"
            ? c
            : JSON.stringify(c),
      )
      .join(", ");
  }
  return x !== null && typeof x === "object" ? JSON.stringify(x) : String(x);
}

/** Render the snapshot: one "name value" line per counter, a heading per group. */
export function formatStats(stats: Record<string, unknown>, opts: { raw?: boolean } = {}): string {
  const raw = opts.raw === true;
  const lines: string[] = [];
  for (const [group, v] of Object.entries(stats)) {
    if (Array.isArray(v)) {
      lines.push(`${group}:`);
      for (const row of v as Record<string, unknown>[])
        lines.push(
          `  ${Object.entries(row)
            .map(([k, x]) => `${k}=${show(x, k, raw)}`)
            .join(" ")}`,
        );
    } else if (v !== null && typeof v === "object") {
      lines.push(`${group}:`);
      const entries = Object.entries(v as Record<string, unknown>);
      const w = Math.max(...entries.map(([k]) => k.length), 1);
      for (const [k, x] of entries) lines.push(`  ${k.padEnd(w)}  ${show(x, k, raw)}`);
    } else lines.push(`${group}: ${String(v)}`);
  }
  return `${lines.join("\n")}\n`;
}

async function statsCommand(argv: Record<string, unknown>): Promise<number> {
  let stats: Record<string, unknown> = {};
  await request(String(argv.socket), { cmd: "stats" }, (obj) => {
    if (obj.type === "stats") stats = obj.stats as Record<string, unknown>;
  });
  process.stdout.write(
    argv.json === true
      ? `${JSON.stringify(stats, null, 2)}\n`
      : formatStats(stats, { raw: argv.raw === true }),
  );
  return 0;
}

export const stats: Command = {
  command: "stats",
  describe: "print the running daemon's counters",
  builder: (y) =>
    clientOptions(y).option("raw", {
      type: "boolean",
      describe: "exact numbers instead of 1.2k / 3.4 MiB",
    }),
  examples: [
    ["$0 stats", "counters, human-readable"],
    ["$0 stats --json | jq .drops", "exact values for scripts"],
  ],
  async run(argv) {
    const socket = reachableSocket(argv);
    return socket === undefined ? 1 : statsCommand({ ...argv, socket });
  },
};
