/**
 * `npm run bench:restart` (`node dist/test/bench/restart.js [ROUNDS] [TCP] [UDP] [DAEMON FLAGS...]`,
 * e.g. `... 5 50 20 --queues 1`): the forwarding
 * gap and the packets lost of a restart, each way (docs/operations.md §Restart), over ROUNDS
 * restarts (default 5) with TCP connections (default 50) and UDP sockets (default 20) going
 * through the daemon and a probe datagram every 2 ms. Prints one line per restart and the median
 * and maximum per way:
 *
 *   gap       the probe's longest time between two echoes (what a client saw, to ~2 ms)
 *   daemon    the old daemon stopped reading -> the new one read its first packet (their logs,
 *             CLOCK_MONOTONIC)
 *   lost      probe datagrams not answered
 *   start     the new daemon's exec -> reading (ms), and its steps
 *
 * Needs root: it builds the lab's namespaces (`tnbrs-<pid>-*`) and removes them at the end.
 * Only the lab's own addresses carry traffic; each round is bounded (40 s). Run it on a quiet
 * machine: the gap of a SIGTERM restart is mostly Node starting and iproute2 commands, which a
 * loaded machine slows down; the load average is printed with the results.
 */
import { loadavg } from "node:os";
import { join } from "node:path";
import { missing } from "../netns/helpers/lab.js";
import { RestartLab } from "../netns/helpers/restart-lab.js";

const ROUNDS = Number(process.argv[2] ?? 5);
const TCP = Number(process.argv[3] ?? 50);
const UDP = Number(process.argv[4] ?? 20);
const FLAGS = process.argv.slice(5);
const PROBE_MS = 2;

interface Row {
  way: string;
  gap: number;
  daemon: number | null;
  lost: number;
  sent: number;
  reading: number | null;
  start: Record<string, number> | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? Number.NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const fmt = (x: number | null) => (x === null || Number.isNaN(x) ? "?" : x.toFixed(1));

async function main(): Promise<number> {
  const why = missing(["curl"]);
  if (why) {
    process.stderr.write(`bench:restart: ${why}\n`);
    return 1;
  }
  const rl = await RestartLab.up("tnbrs");
  const rows: Row[] = [];
  try {
    const lab = rl.lab;
    const STATE = ["--table-state-file", join(lab.tmp, "table.state"), ...FLAGS];
    await lab.startDaemon(STATE);
    for (let i = 0; i < ROUNDS; i++)
      for (const way of ["sigterm", "handover"] as const) {
        let x: Awaited<ReturnType<typeof rl.sigterm>> | undefined;
        const t = await rl.withTraffic(
          { seconds: 40, tcp: TCP, udp: UDP, probeMs: PROBE_MS },
          async () => {
            x = way === "sigterm" ? await rl.sigterm(STATE) : await rl.handover();
            return x.ms;
          },
        );
        const row: Row = {
          way,
          gap: t.res.probeMaxGapMs,
          daemon: x?.daemonGapMs ?? null,
          lost: t.res.probeSent - t.res.probeAnswered,
          sent: t.res.probeSent,
          reading: x?.start?.reading ?? null,
          start: x?.start ?? null,
        };
        rows.push(row);
        process.stdout.write(
          `${way.padEnd(8)} round ${i + 1}: gap ${row.gap} ms, daemon gap ${fmt(row.daemon)} ms, lost ${row.lost} of ${row.sent}, new daemon exec->reading ${fmt(row.reading)} ms ${JSON.stringify(row.start)} (load ${loadavg()[0]!.toFixed(1)})\n`,
        );
      }
    await lab.stopDaemon();
  } finally {
    await rl.down();
  }
  process.stdout.write(
    `\nrestart gap and loss over ${ROUNDS} rounds, ${TCP} TCP + ${UDP} UDP + a probe every ${PROBE_MS} ms${FLAGS.length ? `, daemon flags ${FLAGS.join(" ")}` : ""} (load average ${loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}):\n`,
  );
  for (const way of ["sigterm", "handover"]) {
    const r = rows.filter((x) => x.way === way);
    const col = (f: (x: Row) => number | null) => {
      const v = r.map(f).filter((n): n is number => n !== null && !Number.isNaN(n));
      return `median ${fmt(median(v))}, max ${fmt(v.length ? Math.max(...v) : Number.NaN)}`;
    };
    process.stdout.write(
      `  ${way.padEnd(8)} gap (probe) ms: ${col((x) => x.gap)}; daemon gap ms: ${col((x) => x.daemon)}; lost: ${col((x) => x.lost)}; exec->reading ms: ${col((x) => x.reading)}\n`,
    );
  }
  return 0;
}

main().then(
  (c) => {
    process.exitCode = c;
  },
  (e: unknown) => {
    process.stderr.write(`bench:restart: ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exitCode = 1;
  },
);
