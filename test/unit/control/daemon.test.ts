/**
 * The real Daemon, composed as `tunnat run` composes it, on the memory device: no TUN, no kernel
 * (routes unmanaged, a runner that reaches nothing), the HTTP listener and the control socket on
 * local endpoints of this test.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import t, { type Test } from "tap";
import { loadConfig } from "../../../src/control/config.js";
import { request } from "../../../src/control/control-client.js";
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

async function startDaemon(t: Test, deps: Partial<DaemonDeps> = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tunnat-daemon-"));
  const socket = join(dir, "tunnat.sock");
  const cfg = loadConfig({
    flags: {
      inside: "10.0.0.0/16",
      "nat-address": "198.51.100.7",
      "manage-routes": false,
      "control-socket": socket,
    },
    env: {},
  });
  // Any free port (the schema asks for 1..65535; the listener takes 0).
  cfg.control.metrics = { host: "127.0.0.1", port: 0 };
  let dev = new MemoryDevice();
  const d = await Daemon.start(cfg, pino({ level: "silent" }), {
    // As the TUN would be opened: with the daemon's virtio_net_hdr setting (on by default).
    openTun: (o) => {
      dev = new MemoryDevice({ name: o.name, vnetHdr: o.vnetHdr, slots: 64 });
      return dev;
    },
    runner: NOWHERE,
    preflight: false,
    ...deps,
  });
  t.teardown(async () => {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { d, dev, socket };
}

/** Send `batches` full batches of outbound UDP through the daemon's data loop. */
function traffic(dev: MemoryDevice, batches: number): void {
  for (let b = 0; b < batches; b++) {
    for (let i = 0; i < dev.slots; i++)
      dev.inject(
        build({
          src: "10.0.1.2",
          dst: "192.0.2.10",
          proto: "udp",
          sport: 1024 + ((b * dev.slots + i) % 60000),
          dport: 53,
          payload: "x".repeat(200),
          ...(dev.vnetHdr ? { vnet: {} } : {}),
        }),
      );
    dev.flush();
  }
}

async function scrape(d: Daemon, name: string): Promise<number> {
  const port = d.http?.address.port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
}

t.test("the batch-duration metric of a running daemon grows with its batches", async (t) => {
  const { d, dev } = await startDaemon(t);
  traffic(dev, 20);
  t.equal(d.loop?.loopStats.batches, 20);
  t.ok((d.loop?.loopStats.batchSeconds ?? 0) > 0, "time was spent translating the batches");
  t.equal(await scrape(d, "tunnat_datapath_batch_duration_seconds_count"), 20);
  t.ok(
    (await scrape(d, "tunnat_datapath_batch_duration_seconds_sum")) > 0,
    "and /metrics exports it",
  );
});

t.test("batch durations come from the injected timer, not from the batch clock", async (t) => {
  let ms = 0;
  // Every read is 2 ms after the one before: one batch takes exactly 2 ms.
  const { d, dev } = await startDaemon(t, { timer: () => (ms += 2) });
  traffic(dev, 3);
  t.equal(d.loop?.loopStats.batchSeconds, 0.006);
});

t.test(
  "the control socket and /metrics of the composed daemon read the same counters",
  async (t) => {
    const { d, dev, socket } = await startDaemon(t);
    traffic(dev, 2);
    let stats: Record<string, Record<string, number>> = {};
    await request(socket, { cmd: "stats" }, (o) => {
      if (o.type === "stats") stats = o.stats as typeof stats;
    });
    t.equal(stats.datapath?.packets, 128);
    t.equal(await scrape(d, "tunnat_datapath_read_packets_total"), 128);
    t.equal(stats.nat?.packetsOutToDestination, 128);
    t.equal(await scrape(d, "tunnat_out_to_destination_packets_total"), 128);
  },
);

t.test("a stopped daemon serves no metrics and closes its control socket", async (t) => {
  const { d, socket } = await startDaemon(t);
  const port = d.http?.address.port;
  await d.stop();
  await t.rejects(fetch(`http://127.0.0.1:${port}/metrics`));
  await t.rejects(
    request(socket, { cmd: "stats" }, () => undefined),
    { code: "TUNNAT_ERR_NOT_RUNNING" },
  );
});

t.test("a reload's time is wall-clock time, not the monotonic clock's", async (t) => {
  const WALL = Date.UTC(2026, 11, 2, 3, 4, 5);
  const { d } = await startDaemon(t, { wallClock: () => WALL });
  t.equal(d.reloads.lastSuccessAt, WALL / 1000, "the start counts as the first load");
  const r = d.reload(d.config);
  // It was built from the monotonic batch clock, whose zero is arbitrary: 1970-01-12 and so on.
  t.equal(r.at, "2026-12-02T03:04:05.000Z", "the reload result shows when it happened");
  t.equal(d.reloads.lastSuccessAt, WALL / 1000, "and the reload timestamp metric reads the same");
});
