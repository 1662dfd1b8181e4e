/**
 * Shared-address mode shows operators the address the internet sees: the flow table holds the
 * internal address (169.254.77.2 here), but metrics labels, `tunnat stats` port rows, `flows`
 * listings and their `nat` filter, `flows --follow` events and the mapping log all name the
 * shared one (shared-address.ts shownAddress). The daemon's wiring of it is checked in the lab
 * (test/netns/shared-address.test.ts).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { FlowTable } from "../../../src/conntrack/table.js";
import { request, stream } from "../../../src/control/control-client.js";
import { startControlSocket } from "../../../src/control/control-socket.js";
import { FlowEvents } from "../../../src/control/flow-events.js";
import { MappingLog } from "../../../src/control/mapping-log.js";
import { createMetrics } from "../../../src/control/metrics.js";
import { shownAddress } from "../../../src/control/shared-address.js";
import { statsSnapshot } from "../../../src/control/stats-snapshot.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { Translator } from "../../../src/nat/translate.js";
import { build, ip } from "../../helpers/packet.js";

const SHARED = "172.31.0.10";
const INTERNAL = "169.254.77.2";
const SRV = "203.0.113.10";

t.test("metrics, stats, flows, events and the mapping log show the shared address", async (t) => {
  const shown = shownAddress({
    shared: ip(SHARED),
    internal: ip(INTERNAL),
    portLo: 61000,
    portHi: 65535,
  });
  const chunks: string[] = [];
  const sink = new PassThrough();
  sink.on("data", (d: Buffer) => chunks.push(d.toString()));
  const log = new MappingLog({
    sink,
    ownsSink: false,
    destinations: false,
    outsideAddress: shown,
  });
  const clock = new ManualClock();
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [ip(INTERNAL)],
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: 1024,
    portLo: 61000,
    portHi: 65535,
  });
  const events = new FlowEvents(cfg.maxFlows);
  const table = new FlowTable(cfg, stats, { ...log.hooks, ...events.hooks });
  events.attach(table);
  const tr = new Translator(cfg, table, clock, stats);
  const send = (spec: Parameters<typeof build>[0]) => {
    const b = build(spec);
    const slot = new Uint8Array(2048);
    slot.set(b, 0);
    return tr.process(slot, 0, b.length);
  };

  const dir = mkdtempSync(join(tmpdir(), "tunnat-shown-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "tunnat.sock");
  const srv = await startControlSocket(path, {
    table,
    events,
    outsideAddress: shown,
    nowSec: () => Math.floor(clock.now() / 1000),
    stats: () => ({}),
  });
  t.teardown(() => srv.close());
  // A follower first, so it sees the flow's creation.
  const seen: Record<string, unknown>[] = [];
  const ac = new AbortController();
  const following = stream(
    path,
    { cmd: "follow", nat: SHARED },
    (o) => {
      if (o.type === "event") {
        seen.push(o);
        ac.abort();
      }
    },
    ac.signal,
  );
  await new Promise((r) => setTimeout(r, 50));
  send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  await following;
  t.equal(seen[0]?.outsideAddr, SHARED, "a follow event names the shared address");

  const m = createMetrics(
    { stats, table, loopStats: new LoopStats(), outsideAddress: shown },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  const text = await m.registry.metrics();
  t.match(text, `tunnat_nat_ports_used{nat_address="${SHARED}",protocol="udp"} 1`);
  t.notMatch(text, INTERNAL, "no metric names the internal address");

  const snap = statsSnapshot({ stats, table, loopStats: new LoopStats(), outsideAddress: shown });
  const ports = snap.ports as { natAddress: string; protocol: string; used: number }[];
  t.same(
    ports.filter((p) => p.used > 0).map((p) => [p.natAddress, p.protocol, p.used]),
    [[SHARED, "udp", 1]],
    "tunnat stats (and status) port rows",
  );

  const flows: Record<string, unknown>[] = [];
  await request(path, { cmd: "flows", nat: SHARED }, (o) => {
    if (o.type === "flow") flows.push(o);
  });
  t.equal(flows.length, 1, "a --nat filter with the shared address finds the flow");
  t.equal(flows[0]?.outsideAddr, SHARED);
  const none: unknown[] = [];
  await request(path, { cmd: "flows", nat: INTERNAL }, (o) => {
    if (o.type === "flow") none.push(o);
  });
  t.equal(none.length, 0, "the internal address is nothing an operator sees");

  log.flush();
  await new Promise((r) => setImmediate(r));
  const line = JSON.parse(chunks.join("").split("\n")[0] ?? "{}") as { outside?: string };
  t.match(line.outside, new RegExp(`^${SHARED.replace(/\./g, "\\.")}:\\d+$`), "mapping log");
});

t.test("without shared-address mode the address is shown as is", async (t) => {
  const shown = shownAddress(null);
  t.equal(shown(ip(INTERNAL)), ip(INTERNAL));
});
