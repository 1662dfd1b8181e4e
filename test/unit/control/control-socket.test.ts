import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { formatFlow } from "../../../src/cli/flows.js";
import { formatStats } from "../../../src/cli/stats.js";
import { request } from "../../../src/control/control-client.js";
import {
  type ControlSource,
  MAX_CLIENTS,
  startControlSocket,
} from "../../../src/control/control-socket.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

const NAT = "203.0.113.1";
const SRV = "203.0.113.10";

function rig(maxFlows = 4096) {
  const clock = new ManualClock();
  const stats = new NatStats();
  const tr = newTranslator(
    defaultNatConfig({
      natAddresses: [ip(NAT)],
      inside: [{ addr: ip("10.0.0.0"), len: 8 }],
      maxFlows,
      hashSeed: 3,
    }),
    clock,
    stats,
  );
  const slot = new Uint8Array(65600);
  const send = (spec: Parameters<typeof build>[0]) => {
    const b = build(spec);
    slot.set(b, 0);
    return tr.process(slot, 0, b.length);
  };
  const src: ControlSource = {
    table: tr.table,
    nowSec: () => Math.floor(clock.now() / 1000),
    stats: () => ({ nat: { bytesOutToDestination: stats.bytesOutToDestination } }),
  };
  return { clock, stats, tr, send, src };
}

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), "tunnat-ctl-"));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

async function list(path: string, req: Record<string, unknown> = {}) {
  const flows: Record<string, unknown>[] = [];
  let end: Record<string, unknown> | undefined;
  await request(path, { cmd: "flows", ...req }, (o) => {
    if (o.type === "flow") flows.push(o);
    else end = o;
  });
  return { flows, end };
}

t.test("flows are listed with filters by host, protocol, state and a limit", async (t) => {
  const r = rig();
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  r.send({ src: "10.0.1.2", dst: SRV, proto: "tcp", sport: 5000, dport: 80, flags: 0x02 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "tcp", sport: 5001, dport: 80, flags: 0x02 });
  const port = r.tr.table.oport(2);
  r.send({ src: SRV, dst: NAT, proto: "tcp", sport: 80, dport: port, flags: 0x12 });
  r.send({ src: "10.0.1.3", dst: SRV, proto: "icmp", icmpId: 77 });
  const path = join(tmp(t), "run", "tunnat.sock");
  const srv = await startControlSocket(path, r.src);
  t.teardown(() => srv.close());

  const all = await list(path);
  t.equal(all.flows.length, 4);
  t.same(all.end, { type: "end", matched: 4 });
  const p1 = await list(path, { host: "10.0.1.2" });
  t.same(p1.flows.map((f) => f.proto).sort(), ["tcp", "udp"]);
  const udp = p1.flows.find((f) => f.proto === "udp");
  t.match(udp, {
    insideAddr: "10.0.1.2",
    insidePort: 4000,
    outsideAddr: NAT,
    remoteAddr: SRV,
    remotePort: 53,
    state: "UNREPLIED",
    timeout: 300,
    pktsOut: 1,
  });
  const est = await list(path, { proto: "tcp", state: "established" });
  t.equal(est.flows.length, 1);
  t.match(est.flows[0], { insideAddr: "10.0.1.3", state: "ESTABLISHED", replied: true });
  t.equal((await list(path, { proto: "icmp" })).flows[0]?.insidePort, 77);
  t.equal((await list(path, { limit: 2 })).flows.length, 2);
  await t.rejects(list(path, { host: "nope" }), {
    code: "TUNNAT_ERR_CONTROL",
    message: /bad host/,
  });
  await t.rejects(list(path, { state: "DANCING" }), { message: /bad state/ });
});

t.test("the listing prints like conntrack -L", async (t) => {
  const line = formatFlow({
    type: "flow",
    proto: "tcp",
    state: "ESTABLISHED",
    timeout: 7439,
    insideAddr: "10.0.1.2",
    insidePort: 5000,
    outsideAddr: NAT,
    outsidePort: 5000,
    remoteAddr: SRV,
    remotePort: 80,
    pktsOut: 3,
    bytesOut: 180,
    pktsIn: 2,
    bytesIn: 120,
    replied: true,
    inbound: false,
  });
  t.equal(
    line,
    "tcp      6   7439 ESTABLISHED src=10.0.1.2 dst=203.0.113.10 sport=5000 dport=80 packets=3 bytes=180 src=203.0.113.10 dst=203.0.113.1 sport=80 dport=5000 packets=2 bytes=120 [ASSURED]",
  );
  t.match(
    formatStats({ nat: { bytesOutToDestination: 42 }, ready: true }),
    /bytesOutToDestination\s+42/,
  );
});

t.test("stats answer with the source's counters", async (t) => {
  const r = rig();
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53, payload: "abcd" });
  const path = join(tmp(t), "ctl.sock");
  const srv = await startControlSocket(path, r.src);
  t.teardown(() => srv.close());
  let got: unknown;
  await request(path, { cmd: "stats" }, (o) => {
    got = o;
  });
  t.same(got, { type: "stats", stats: { nat: { bytesOutToDestination: 32 } } });
});

t.test("the socket is 0600 in a 0700 directory it created, and is removed on close", async (t) => {
  const dir = join(tmp(t), "made");
  const path = join(dir, "tunnat.sock");
  const srv = await startControlSocket(path, rig().src);
  t.equal(statSync(dir).mode & 0o777, 0o700);
  t.equal(statSync(path).mode & 0o777, 0o600);
  t.ok(statSync(path).isSocket());
  await srv.close();
  t.throws(() => statSync(path), { code: "ENOENT" });
});

t.test("with a group the socket is 0660 and that group's members may connect", async (t) => {
  const dir = tmp(t);
  chmodSync(dir, 0o755);
  const path = join(dir, "ctl.sock");
  const gid = 4; // "adm" on Debian; any group the test process may chown to (root: any)
  const srv = await startControlSocket(path, rig().src, undefined, { group: gid });
  t.teardown(() => srv.close());
  t.equal(statSync(path).mode & 0o777, 0o660);
  t.equal(statSync(path).gid, gid);
  if (process.getuid?.() !== 0) return;
  // A real non-root client: nobody with the group may connect, nobody without it may not.
  const connect = (groups: string) =>
    spawnSync(
      "setpriv",
      [
        "--reuid=65534",
        `--regid=${groups === "" ? "65534" : groups}`,
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        `import socket; socket.socket(socket.AF_UNIX).connect(${JSON.stringify(path)})`,
      ],
      { encoding: "utf8" },
    );
  const member = connect(String(gid));
  t.equal(member.status, 0, `a member connects (${member.stderr.trim()})`);
  const other = connect("");
  t.not(other.status, 0, "a non-member is refused");
  t.match(other.stderr, /PermissionError/, "by the socket's mode");
});

t.test("without a group the socket is the owner's alone", async (t) => {
  const path = join(tmp(t), "ctl.sock");
  const srv = await startControlSocket(path, rig().src);
  t.teardown(() => srv.close());
  t.equal(statSync(path).mode & 0o777, 0o600);
});

t.test("a stale socket is replaced; a live one is refused", async (t) => {
  const path = join(tmp(t), "ctl.sock");
  // A socket file nobody listens on, as a killed daemon leaves it: bound, never listening.
  execFileSync("python3", [
    "-c",
    `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path)})`,
  ]);
  t.ok(statSync(path).isSocket());
  const srv = await startControlSocket(path, rig().src);
  t.teardown(() => srv.close());
  let got: unknown;
  await request(path, { cmd: "stats" }, (o) => {
    got = o;
  });
  t.match(got, { type: "stats" }, "the new daemon answers on the old path");
  await t.rejects(startControlSocket(path, rig().src), {
    code: "TUNNAT_ERR_CONTROL",
    message: /another daemon answers/,
  });
});

t.test("a client with no daemon gets TUNNAT_ERR_NOT_RUNNING", async (t) => {
  await t.rejects(
    request(join(tmp(t), "none.sock"), { cmd: "stats" }, () => undefined),
    {
      code: "TUNNAT_ERR_NOT_RUNNING",
    },
  );
});

t.test("listing a big table yields to the event loop between chunks", async (t) => {
  const r = rig(65536);
  for (let i = 0; i < 60000; i++) {
    const h = 2 + (i % 200);
    r.send({
      src: `10.0.${1 + (h >> 8)}.${h & 255}`,
      dst: SRV,
      proto: "udp",
      sport: 1024 + Math.floor(i / 200),
      dport: 53,
    });
  }
  t.equal(r.tr.table.active, 60000);
  const path = join(tmp(t), "big.sock");
  const srv = await startControlSocket(path, r.src);
  t.teardown(() => srv.close());
  // Stand-in for TUN batches: a callback every turn of the loop while the listing runs.
  let turns = 0;
  let running = true;
  const spin = () => {
    turns++;
    if (running) setImmediate(spin);
  };
  setImmediate(spin);
  const { flows } = await list(path);
  running = false;
  t.equal(flows.length, 60000);
  t.ok(
    turns >= 4,
    `the loop turned ${turns} times during the listing (65536 slots / 16384 a chunk)`,
  );
});

/** Connect and resolve once connected. */
function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    s.on("error", () => undefined);
    s.once("connect", () => resolve(s));
    s.once("close", () => reject(new Error("closed before connect")));
  });
}

const closed = (s: Socket) =>
  new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once("close", () => resolve())));

/** Connections the server holds now. */
const connections = (srv: { server: import("node:net").Server }) =>
  new Promise<number>((resolve) => srv.server.getConnections((_e, n) => resolve(n)));

/** Poll until the server holds at most `n` connections (bounded: 200 polls of 100 ms). */
async function until(srv: { server: import("node:net").Server }, n: number): Promise<number> {
  let c = await connections(srv);
  for (let i = 0; i < 200 && c > n; i++) {
    await new Promise((res) => setTimeout(res, 100));
    c = await connections(srv);
  }
  return c;
}

t.test("clients that never finish a request or never read are dropped when idle", async (t) => {
  const r = rig(65536);
  for (let i = 0; i < 30000; i++)
    r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 1024 + i, dport: 53 });
  const path = join(tmp(t), "idle.sock");
  // Long enough for all of them to connect and the busy answer to come on a loaded machine.
  const srv = await startControlSocket(path, r.src, undefined, { idleTimeoutMs: 8000 });
  t.teardown(() => srv.close());
  // Fill every slot: half with half a request, half with a listing of 30,000 flows they never read.
  const socks = await Promise.all(Array.from({ length: MAX_CLIENTS }, () => connect(path)));
  socks.forEach((s, i) => {
    if (i % 2 === 0) s.write('{"cmd":"fl');
    else {
      s.pause();
      s.write('{"cmd":"flows"}\n');
    }
  });
  t.teardown(() => {
    for (const s of socks) s.destroy();
  });
  // A client's connect() resolves before the server has counted it: probe only once it holds
  // every slot (on a loaded machine the accepts can lag the connects).
  let held = await connections(srv);
  for (let i = 0; i < 100 && held < MAX_CLIENTS; i++) {
    await new Promise((res) => setTimeout(res, 20));
    held = await connections(srv);
  }
  t.equal(held, MAX_CLIENTS, "every slot is held");
  await t.rejects(
    request(path, { cmd: "stats" }, () => undefined),
    /busy/,
    "while they hold every slot a new client is told busy",
  );
  t.equal(await until(srv, 0), 0, "the server lets every idle client go");
  let got: Record<string, unknown> | undefined;
  await request(path, { cmd: "stats" }, (o) => {
    got = o;
  });
  t.equal(got?.type, "stats", "and then answers a normal request");
});

t.test("a client pipelining requests it never reads queues nothing without bound", async (t) => {
  const r = rig();
  const path = join(tmp(t), "pipe.sock");
  const srv = await startControlSocket(path, r.src, undefined, { idleTimeoutMs: 500 });
  t.teardown(() => srv.close());
  const s = await connect(path);
  t.teardown(() => s.destroy());
  s.pause();
  const line = '{"cmd":"stats"}\n'.repeat(4096);
  // The server answers one request at a time and reads no further meanwhile, so once our reads
  // stop its answers back up and so do our writes. Bounded by count and time.
  let backedUp = false;
  for (let i = 0; i < 200 && !backedUp; i++) {
    backedUp = !s.write(line);
    await new Promise((res) => setImmediate(res));
  }
  t.ok(backedUp, "the server stopped reading a client that does not read");
  t.equal(await until(srv, 0), 0, "and dropped it when it idled");
  let got: Record<string, unknown> | undefined;
  await request(path, { cmd: "stats" }, (o) => {
    got = o;
  });
  t.equal(got?.type, "stats");
});

t.test("a request over the limit is answered with an error and the rest discarded", async (t) => {
  const r = rig();
  const path = join(tmp(t), "long.sock");
  const srv = await startControlSocket(path, r.src);
  t.teardown(() => srv.close());
  const s = await connect(path);
  let answer = "";
  s.setEncoding("utf8");
  s.on("data", (d: string) => {
    answer += d;
  });
  s.write(`{"cmd":"stats","pad":"${"x".repeat(100 * 1024)}"}\n`);
  await closed(s);
  t.match(answer, /request too long/);
  t.notMatch(answer, /"type":"stats"/, "the over-long request is not answered");
});

t.test("64 clients that hang up with half a request leave the server answering", async (t) => {
  const r = rig();
  const path = join(tmp(t), "storm.sock");
  const srv = await startControlSocket(path, r.src);
  t.teardown(() => srv.close());
  let uncaught: unknown;
  const onUncaught = (e: unknown) => {
    uncaught = e;
  };
  process.on("uncaughtException", onUncaught);
  t.teardown(() => process.off("uncaughtException", onUncaught));
  const socks = await Promise.all(Array.from({ length: 64 }, () => connect(path)));
  for (const s of socks) s.write('{"cmd":"st');
  await new Promise((res) => setTimeout(res, 50));
  for (const s of socks) s.destroy();
  await Promise.all(socks.map(closed));
  await new Promise((res) => setTimeout(res, 100));
  t.equal(uncaught, undefined, "no uncaught error (ECONNRESET) in the server's process");
  let got: Record<string, unknown> | undefined;
  await request(path, { cmd: "stats" }, (o) => {
    got = o;
  });
  t.equal(got?.type, "stats");
});
