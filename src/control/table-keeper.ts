/**
 * The daemon's side of the table state file (table-state.ts): restore at start, a checkpoint
 * every `checkpointInterval` seconds while running, a save at a clean stop; each logged, and
 * their figures kept for /metrics. Wall time is read here only, through the injected clock.
 */
import { renameSync } from "node:fs";
import type { Logger } from "pino";
import { errorMessage } from "../base/errors.js";
import type { FlowTable } from "../conntrack/table.js";
import type { NatConfig } from "../nat/config.js";
import type { NatStats } from "../nat/stats.js";
import {
  checkpointTableState,
  type LoadResult,
  loadTableState,
  type SaveResult,
  saveTableState,
} from "./table-state.js";

/** What /metrics shows about the state file. */
export class TableStateStats {
  /** Seconds the restore at start took (0 when nothing was restored). */
  restoreSeconds = 0;
  restoredFlows = 0;
  /** Saved flows whose lifetime ran out while no daemon ran. */
  restoreExpiredFlows = 0;
  /** 1 when the state file was refused at start (the log says why). */
  restoreRefused = 0;
  checkpoints = 0;
  checkpointFailures = 0;
  /** The last checkpoint: duration, longest event-loop stall (one slice), flows, bytes. */
  lastCheckpointSeconds = 0;
  lastCheckpointMaxSliceSeconds = 0;
  lastCheckpointFlows = 0;
  lastCheckpointBytes = 0;
  /** Wall-clock seconds since the epoch of the last successful checkpoint or save. */
  lastSaveTime = 0;
}

export interface TableKeeperOptions {
  file: string;
  /** Seconds; 0 = no periodic checkpoint. */
  interval: number;
  nat: NatConfig;
  log: Logger;
  /** The table's current second (the daemon's monotonic clock). */
  now: () => number;
  /** Wall-clock ms since the epoch. */
  wallClock?: () => number;
}

export class TableKeeper {
  readonly stats = new TableStateStats();
  private timer: ReturnType<typeof setInterval> | undefined;
  private running: Promise<void> | null = null;
  private readonly wall: () => number;

  constructor(private readonly o: TableKeeperOptions) {
    this.wall = o.wallClock ?? Date.now;
  }

  /**
   * Restore the state file into the (empty) table. A refused file is logged with its reason,
   * moved aside to FILE.refused (the next save would overwrite it), and the table stays empty.
   */
  restore(table: FlowTable, stats: NatStats): LoadResult {
    const o = this.o;
    const r = loadTableState({
      file: o.file,
      table,
      stats,
      nat: o.nat,
      now: o.now(),
      wallMs: this.wall(),
    });
    if (r.kind === "none") {
      o.log.info({ file: o.file }, "no table state file: starting with an empty table");
    } else if (r.kind === "refused") {
      this.stats.restoreRefused = 1;
      let keptAs: string | undefined = `${o.file}.refused`;
      try {
        renameSync(o.file, keptAs);
      } catch {
        keptAs = undefined;
      }
      o.log.warn(
        { file: o.file, why: r.why, keptAs },
        `table state file refused: ${r.why}; starting with an empty table`,
      );
    } else {
      const rep = r.report;
      this.stats.restoreSeconds = r.ms / 1000;
      this.stats.restoredFlows = rep.flows;
      this.stats.restoreExpiredFlows = rep.expired;
      o.log.info(
        {
          file: o.file,
          flows: rep.flows,
          mappings: table.endpointIndependent ? table.mappings : rep.flows,
          expired: rep.expired,
          refused: rep.refused,
          invalid: rep.invalid,
          invalidReason: rep.invalidReason ?? undefined,
          restingPorts: rep.restingPorts,
          savedAt: new Date(r.savedAtMs).toISOString(),
          downSeconds: Number(r.elapsed.toFixed(3)),
          clockWentBack: r.clockWentBack || undefined,
          ms: Number(r.ms.toFixed(1)),
          processUptimeMs: Math.round(process.uptime() * 1000),
        },
        `restored ${rep.flows} flows in ${r.ms.toFixed(1)} ms (${rep.expired} expired while down)`,
      );
    }
    return r;
  }

  /** Checkpoint every `interval` seconds until stop(). */
  start(table: FlowTable, stats: NatStats): void {
    if (this.o.interval <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      void this.checkpoint(table, stats);
    }, this.o.interval * 1000);
    this.timer.unref();
  }

  /** One checkpoint now, unless one is still under way. */
  checkpoint(table: FlowTable, stats: NatStats): Promise<void> {
    if (this.running) return this.running;
    const o = this.o;
    this.running = checkpointTableState({
      file: o.file,
      table,
      stats,
      nat: o.nat,
      now: o.now(),
      wallMs: this.wall(),
    })
      .then((s) => {
        const st = this.stats;
        st.checkpoints++;
        st.lastCheckpointSeconds = s.ms / 1000;
        st.lastCheckpointMaxSliceSeconds = s.maxSliceMs / 1000;
        st.lastCheckpointFlows = s.flows;
        st.lastCheckpointBytes = s.bytes;
        st.lastSaveTime = this.wall() / 1000;
        o.log.debug(saved(s), "table checkpoint written");
      })
      .catch((e: unknown) => {
        this.stats.checkpointFailures++;
        o.log.warn({ file: o.file, err: errorMessage(e) }, "table checkpoint failed");
      })
      .finally(() => {
        this.running = null;
      });
    return this.running;
  }

  /** Stop the checkpoints, waiting for one under way (its rename must not follow the save). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** Save the table (clean stop, data path stopped). True when written. */
  save(table: FlowTable, stats: NatStats): boolean {
    const o = this.o;
    try {
      const s = saveTableState({
        file: o.file,
        table,
        stats,
        nat: o.nat,
        now: o.now(),
        wallMs: this.wall(),
      });
      this.stats.lastSaveTime = this.wall() / 1000;
      o.log.info(saved(s), `saved ${s.flows} flows in ${s.ms.toFixed(1)} ms`);
      return true;
    } catch (e) {
      o.log.error(
        { file: o.file, err: errorMessage(e) },
        "saving the table failed: the next start begins empty",
      );
      return false;
    }
  }
}

function saved(s: SaveResult): Record<string, unknown> {
  return {
    file: s.file,
    flows: s.flows,
    bytes: s.bytes,
    ms: Number(s.ms.toFixed(1)),
    maxSliceMs: Number(s.maxSliceMs.toFixed(1)),
    slices: s.slices,
  };
}
