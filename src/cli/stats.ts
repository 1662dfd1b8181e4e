/**
 * `tunnat stats`: the running daemon's counters, grouped and aligned for reading, or the raw
 * snapshot with --json (the same numbers /metrics exports, without Prometheus).
 */
import { request } from "../control/control-client.js";
import { clientOptions, reachableSocket } from "./client.js";
import type { Command } from "./command.js";

/** A value in a group: a list of setting changes reads "field old -> new", anything else as JSON. */
function show(x: unknown): string {
  if (Array.isArray(x)) {
    if (x.length === 0) return "none";
    return x
      .map((c: Record<string, unknown>) =>
        "field" in c
          ? `${String(c.field)} ${String(c.old)} -> ${String(c.new)}`
          : JSON.stringify(c),
      )
      .join(", ");
  }
  return x !== null && typeof x === "object" ? JSON.stringify(x) : String(x);
}

/** Render the snapshot: one "name value" line per counter, a heading per group. */
export function formatStats(stats: Record<string, unknown>): string {
  const lines: string[] = [];
  for (const [group, v] of Object.entries(stats)) {
    if (Array.isArray(v)) {
      lines.push(`${group}:`);
      for (const row of v as Record<string, unknown>[])
        lines.push(
          `  ${Object.entries(row)
            .map(([k, x]) => `${k}=${String(x)}`)
            .join(" ")}`,
        );
    } else if (v !== null && typeof v === "object") {
      lines.push(`${group}:`);
      const entries = Object.entries(v as Record<string, unknown>);
      const w = Math.max(...entries.map(([k]) => k.length), 1);
      for (const [k, x] of entries) lines.push(`  ${k.padEnd(w)}  ${show(x)}`);
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
    argv.json === true ? `${JSON.stringify(stats, null, 2)}\n` : formatStats(stats),
  );
  return 0;
}

export const stats: Command = {
  command: "stats",
  describe: "print the running daemon's counters",
  builder: clientOptions,
  async run(argv) {
    const socket = reachableSocket(argv);
    return socket === undefined ? 1 : statsCommand({ ...argv, socket });
  },
};
