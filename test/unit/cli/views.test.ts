/** flows formatting, sorting and filters; status from two snapshots; stats with units. */
import t from "tap";
import {
  FLOWS_HEADER,
  filterOf,
  formatEvent,
  formatFlow,
  sortFlows,
} from "../../../src/cli/flows.js";
import { formatStats } from "../../../src/cli/stats.js";
import { formatStatus, statusView } from "../../../src/cli/status.js";
import type { FlowRecord } from "../../../src/control/control-protocol.js";

function flow(over: Partial<FlowRecord>): FlowRecord {
  return {
    type: "flow",
    proto: "tcp",
    state: "ESTABLISHED",
    timeout: 7439,
    insideAddr: "10.0.1.2",
    insidePort: 5000,
    outsideAddr: "203.0.113.1",
    outsidePort: 41234,
    remoteAddr: "203.0.113.10",
    remotePort: 80,
    pktsOut: 3,
    bytesOut: 180,
    pktsIn: 2,
    bytesIn: 120,
    replied: true,
    inbound: false,
    ...over,
  };
}

t.test("a flow line: human bytes above 1 KiB, exact with raw, age in units", async (t) => {
  const f = flow({ bytesIn: 3 * 1024 * 1024, age: 3725 });
  t.match(formatFlow(f), /bytes=180 .*bytes=3\.0MiB \[ASSURED\] age=1h2m5s$/);
  t.match(formatFlow(f, { raw: true }), /bytes=3145728 \[ASSURED\] age=3725$/);
  t.match(FLOWS_HEADER, /^PROTO\s+#\s+TTL\(s\)\s+STATE/);
  t.match(formatFlow(flow({ replied: false })), /\[UNREPLIED\]/);
});

t.test("sorting: bytes both ways, largest first; age, oldest first", async (t) => {
  const rows = [
    flow({ insidePort: 1, bytesOut: 10, bytesIn: 10, age: 5 }),
    flow({ insidePort: 2, bytesOut: 500, bytesIn: 0, age: 1 }),
    flow({ insidePort: 3, bytesOut: 0, bytesIn: 100, age: 90 }),
  ];
  t.same(
    sortFlows([...rows], "bytes").map((r) => r.insidePort),
    [2, 3, 1],
  );
  t.same(
    sortFlows([...rows], "age").map((r) => r.insidePort),
    [3, 1, 2],
  );
});

t.test("the flags become the daemon's filter", async (t) => {
  t.same(filterOf({ host: "10.0.1.2", nat: "203.0.113.1:41234", dst: "1.2.3.4", proto: "udp" }), {
    host: "10.0.1.2",
    dst: "1.2.3.4",
    nat: "203.0.113.1:41234",
    proto: "udp",
  });
  t.same(filterOf({}), {});
});

t.test("an event reads like conntrack -E", async (t) => {
  const line = formatEvent({
    type: "event",
    event: "destroy",
    time: "2026-01-02T14:02:00.000Z",
    proto: "udp",
    state: "REPLIED",
    insideAddr: "10.0.1.2",
    insidePort: 4000,
    outsideAddr: "203.0.113.1",
    outsidePort: 41234,
    remoteAddr: "203.0.113.10",
    remotePort: 53,
    pktsOut: 1,
    bytesOut: 60,
    pktsIn: 1,
    bytesIn: 90,
    lifetime: 65,
  });
  t.match(line, /^2026-01-02T14:02:00\.000Z \[DESTROY\] udp\s+17 .*dport=41234 .*lifetime=1m5s$/);
});

t.test("status: rates from two snapshots, fill, ports, top talkers, warnings", async (t) => {
  const a = {
    nat: { packetsInFromSource: 100, bytesInFromSource: 10_000 },
    drops: { unsolicited: 5, portExhausted: 0 },
    topTalkers: [{ host: "10.0.1.2", bytesOut: 1000, bytesIn: 0, flows: 1 }],
  };
  const b = {
    gateway: {
      uptimeSeconds: 3725,
      tun: "tunnat0",
      inside: ["10.0.1.0/24"],
      natAddresses: ["203.0.113.1"],
      manageRoutes: true,
      preset: "default",
      mapping: "endpoint-independent",
      filtering: "address-and-port-dependent",
    },
    nat: { packetsInFromSource: 300, bytesInFromSource: 30_000 },
    drops: { unsolicited: 9, portExhausted: 4 },
    table: { flows: 900, capacity: 1024, insideHosts: 2 },
    ports: [{ natAddress: "203.0.113.1", protocol: "udp", used: 60000, free: 5535 }],
    topTalkers: [{ host: "10.0.1.2", bytesOut: 3048, bytesIn: 0, flows: 4 }],
    ready: true,
  };
  const v = statusView(a, b, 2);
  t.equal(v.packetsPerSecond, 100);
  t.equal(v.bytesPerSecond, 10_000);
  t.equal(v.dropsPerSecond, 4);
  t.same(v.dropRates, { unsolicited: 2, portExhausted: 2 });
  t.match(v.topTalkers[0], { host: "10.0.1.2", bytes: 3048, bytesPerSecond: 1024, flows: 4 });
  t.match(v.warnings.join("\n"), /flow table 88% full/);
  t.match(v.warnings.join("\n"), /203\.0\.113\.1 udp: 92% of ports used/);
  t.match(v.warnings.join("\n"), /dropping portExhausted now/);
  const screen = formatStatus(v);
  t.match(screen, /^tunnat: NAT gateway, routes managed, ready\n/);
  t.match(screen, /uptime:\s+1h2m5s/);
  t.match(screen, /flows:\s+900 of 1.0k \(87\.9%\)/);
  t.match(screen, /drops:\s+4\/s \(unsolicited 2\/s, portExhausted 2\/s\)/);
  t.match(screen, /10\.0\.1\.2\s+3\.0 KiB\s+1\.0 KiB\/s\s+4 flows/);
  t.ok(screen.split("\n").length < 25, "fits one screen");
  const quiet = statusView(b, b, 1);
  t.equal(quiet.dropsPerSecond, 0);
});

t.test("stats: human units unless raw", async (t) => {
  const s = { nat: { bytesOutToDestination: 5 * 1024 * 1024, flowsCreated: 12345 } };
  t.match(formatStats(s), /bytesOutToDestination\s+5\.0 MiB/);
  t.match(formatStats(s), /flowsCreated\s+12k/);
  t.match(formatStats(s, { raw: true }), /bytesOutToDestination\s+5242880/);
  // A list of strings (the gateway's inside prefixes) reads as a list.
  t.match(
    formatStats({ gateway: { inside: ["10.0.1.0/24", "10.0.2.0/24"] } }),
    /inside\s+10\.0\.1\.0\/24, 10\.0\.2\.0\/24/,
  );
});
