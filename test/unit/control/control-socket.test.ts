import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { formatFlow } from "../../../src/cli/flows.js";
import { formatStats } from "../../../src/cli/stats.js";
import { ManualClock } from "../../../src/conntrack/clock.js";
import {
  type ControlSource,
  request,
  startControlSocket,
} from "../../../src/control/control-socket.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { Translator } from "../../../src/nat/translate.js";
import { build, ip } from "../../helpers/packet.js";

const NAT = "203.0.113.1";
const SRV = "203.0.113.10";

function rig(maxFlows = 4096) {
  const clock = new ManualClock();
  const stats = new NatStats();
  const tr = new Translator(
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
    "tcp      6 7439 ESTABLISHED src=10.0.1.2 dst=203.0.113.10 sport=5000 dport=80 packets=3 bytes=180 src=203.0.113.10 dst=203.0.113.1 sport=80 dport=5000 packets=2 bytes=120 [ASSURED]",
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
  const srv = await startControlSocket(path, rig().src, undefined, gid);
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
