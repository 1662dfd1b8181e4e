/**
 * The daemon's restart cycle on the memory device (no TUN, no kernel): a clean stop saves the
 * table, the next start restores it (same flows, same outside ports, counters going on), the
 * periodic checkpoint writes the file while running, and a start that fails never replaces a
 * good state file.
 */
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import t from "tap";
import { loadConfig, type TunnatConfig } from "../../../src/control/config.js";
import { Daemon, type DaemonDeps } from "../../../src/control/daemon.js";
import type { Runner } from "../../../src/control/runner.js";
import { MemoryDevice } from "../../../src/io/memory-device.js";
import { build } from "../../helpers/packet.js";

const NOWHERE: Runner = {
  where: " (test)",
  ip: () => Promise.reject(new Error("no kernel in this test")),
  nft: () => Promise.reject(new Error("no kernel in this test")),
  readSysctl: async () => "1",
  writeSysctl: async () => undefined,
};

const dir = mkdtempSync(join(tmpdir(), "tunnat-restart-"));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function config(extra: Record<string, unknown> = {}): TunnatConfig {
  const cfg = loadConfig({
    flags: {
      inside: "10.0.0.0/16",
      "nat-address": "198.51.100.7",
      "manage-routes": false,
      "control-socket": join(dir, "tunnat.sock"),
      "table-state-file": join(dir, "table.state"),
      ...extra,
    },
    env: {},
  });
  cfg.control.metrics = { host: "127.0.0.1", port: 0 };
  return cfg;
}

async function start(cfg: TunnatConfig, deps: Partial<DaemonDeps> = {}) {
  let dev = new MemoryDevice();
  const d = await Daemon.start(cfg, pino({ level: "silent" }), {
    openTun: (o) => {
      dev = new MemoryDevice({ name: o.name, vnetHdr: o.vnetHdr, slots: 64 });
      return dev;
    },
    runner: NOWHERE,
    preflight: false,
    ...deps,
  });
  return { d, dev: () => dev };
}

function udp(dev: MemoryDevice, n: number): void {
  for (let i = 0; i < n; i++)
    dev.inject(
      build({
        src: "10.0.1.2",
        dst: "192.0.2.10",
        proto: "udp",
        sport: 2000 + i,
        dport: 53,
        payload: "x",
        ...(dev.vnetHdr ? { vnet: {} } : {}),
      }),
    );
  dev.flush();
}

/** Outside port of each flow, by inside port. */
function ports(d: Daemon): Map<number, number> {
  const tb = d.translator?.table;
  const m = new Map<number, number>();
  tb?.forEach((f) => {
    m.set(tb.iport(f), tb.oport(f));
  });
  return m;
}

t.test("a clean stop saves the table and the next start restores it", async (t) => {
  const a = await start(config());
  udp(a.dev(), 40);
  const before = ports(a.d);
  t.equal(before.size, 40);
  const created = a.d.stats.flowsCreated;
  await a.d.stop();
  t.ok(statSync(join(dir, "table.state")).size > 40 * 64, "the state file holds the flows");
  const b = await start(config());
  t.teardown(() => b.d.stop());
  t.same(ports(b.d), before, "every flow on the outside port it had");
  t.equal(b.d.stats.flowsCreated, created, "counters go on from where they were");
  t.equal(b.d.tableKeeper?.stats.restoredFlows, 40);
  t.ok((b.d.tableKeeper?.stats.restoreSeconds ?? 0) > 0);
  // A packet of a restored flow leaves on its old port.
  udp(b.dev(), 1);
  t.equal(b.d.stats.flowsCreated, created, "no new flow for a restored one");
  await b.d.stop();
});

t.test("the checkpoint writes the table while running", async (t) => {
  rmSync(join(dir, "table.state"), { force: true });
  const a = await start(config({ "checkpoint-interval": "1s" }));
  t.teardown(() => a.d.stop());
  udp(a.dev(), 5);
  for (let i = 0; i < 40 && (a.d.tableKeeper?.stats.checkpoints ?? 0) === 0; i++)
    await new Promise((r) => setTimeout(r, 100));
  t.ok((a.d.tableKeeper?.stats.checkpoints ?? 0) >= 1, "a checkpoint was written");
  t.equal(a.d.tableKeeper?.stats.lastCheckpointFlows, 5);
  t.ok(existsSync(join(dir, "table.state")));
  await a.d.stop();
});

t.test("a start that fails leaves the state file as it was", async (t) => {
  const file = join(dir, "table.state");
  const a = await start(config());
  udp(a.dev(), 7);
  await a.d.stop();
  const ino = statSync(file).ino;
  await t.rejects(
    start(config(), {
      openTun: () => {
        throw new Error("no TUN today");
      },
    }),
  );
  // A save would have renamed a new file over it (another inode).
  t.equal(statSync(file).ino, ino, "not replaced by the failed start");
  const b = await start(config());
  t.equal(b.d.translator?.table.active, 7, "and the next good start restores it");
  await b.d.stop();
});

t.test("--table-state-file none neither saves nor restores", async (t) => {
  const file = join(dir, "table.state");
  rmSync(file, { force: true });
  const a = await start(config({ "table-state-file": "none" }));
  udp(a.dev(), 3);
  await a.d.stop();
  t.notOk(existsSync(file));
  t.equal(a.d.tableKeeper, undefined);
});
