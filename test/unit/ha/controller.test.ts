// The role logic: the heartbeat arbiter (a silent peer is taken over from; two actives keep the
// more recent takeover), the keepalived arbiter (the sync link never promotes), and the L2
// takeover's commands.
import t from "tap";
import type { Runner } from "../../../src/control/runner.js";
import { HaController, type Takeover } from "../../../src/ha/controller.js";
import { roleFromState } from "../../../src/ha/ha.js";
import { L2Takeover } from "../../../src/ha/l2.js";
import { Clock, gateway, pipe, run } from "./helpers.js";

function controller(
  clock: Clock,
  g: ReturnType<typeof gateway>,
  arbiter: "keepalived" | "heartbeat",
  priority = 100,
  takeovers: Takeover[] = [],
) {
  const fwd = { on: false };
  const c = new HaController(
    {
      sync: g.sync,
      setForwarding: (on) => {
        fwd.on = on;
      },
      takeovers,
      nowMs: () => clock.ms,
    },
    { arbiter, heartbeatMs: 200, misses: 5, priority, checkMs: 5000, retryMs: 2000 },
  );
  return { c, fwd };
}

function step(clock: Clock, gws: ReturnType<typeof gateway>[], cs: HaController[], n: number) {
  for (let i = 0; i < n; i++) {
    run(clock, gws, 1);
    for (const c of cs) c.tick();
  }
}

t.test(
  "heartbeat arbiter: the higher priority becomes active, the peer takes over when it is silent",
  async (t) => {
    const clock = new Clock();
    const [ea, eb] = pipe();
    const a = gateway(clock, ea, {}, { priority: 150 });
    const b = gateway(clock, eb, {}, { priority: 100 });
    const ca = controller(clock, a, "heartbeat", 150);
    const cb = controller(clock, b, "heartbeat", 100);
    step(clock, [a, b], [ca.c, cb.c], 20);
    t.equal(ca.c.role, "active");
    t.equal(cb.c.role, "standby");
    t.ok(ca.fwd.on);
    t.notOk(cb.fwd.on, "the standby does not forward");
    ea.cut = true; // a dies
    step(clock, [b], [cb.c], 60);
    t.equal(cb.c.role, "active", "b took over from a silent a");
    t.equal(cb.c.stats.failovers, 1);
  },
);

t.test(
  "heartbeat arbiter: two actives that hear each other keep the more recent takeover",
  async (t) => {
    const clock = new Clock();
    const [ea, eb] = pipe();
    const a = gateway(clock, ea, {}, { priority: 150 });
    const b = gateway(clock, eb, {}, { priority: 100 });
    const ca = controller(clock, a, "heartbeat", 150);
    const cb = controller(clock, b, "heartbeat", 100);
    step(clock, [a, b], [ca.c, cb.c], 20);
    // The link breaks with both alive: b promotes (it cannot tell a dead a from a broken link).
    ea.cut = true;
    eb.cut = true;
    step(clock, [a, b], [ca.c, cb.c], 60);
    t.equal(ca.c.role, "active");
    t.equal(cb.c.role, "active", "split: both active while the link is down");
    // The link heals: a (older term) steps down although its priority is higher.
    ea.cut = false;
    eb.cut = false;
    step(clock, [a, b], [ca.c, cb.c], 20);
    t.equal(ca.c.role, "standby", "the older takeover demotes");
    t.equal(cb.c.role, "active");
    t.notOk(ca.fwd.on);
    step(clock, [a, b], [ca.c, cb.c], 200);
    t.ok(a.sync.isSynced, "and resyncs from the new active");
  },
);

t.test("keepalived arbiter: a broken sync link never promotes the standby", async (t) => {
  const clock = new Clock();
  const [ea, eb] = pipe();
  const a = gateway(clock, ea);
  const b = gateway(clock, eb);
  const ca = controller(clock, a, "keepalived");
  const cb = controller(clock, b, "keepalived");
  await ca.c.setRole("active", "keepalived MASTER");
  step(clock, [a, b], [ca.c, cb.c], 20);
  ea.cut = true;
  eb.cut = true;
  step(clock, [a, b], [ca.c, cb.c], 100);
  t.equal(b.sync.peerState, "down");
  t.equal(cb.c.role, "standby", "only keepalived makes b active");
  t.equal(ca.c.role, "active");
  t.notOk(cb.fwd.on);
});

t.test("keepalived's states map to roles", async (t) => {
  t.equal(roleFromState("MASTER"), "active");
  t.equal(roleFromState("BACKUP"), "standby");
  t.equal(roleFromState("FAULT"), "standby");
  t.equal(roleFromState("STOP"), "standby");
  t.equal(roleFromState("active"), "active");
  t.equal(roleFromState("leader"), null);
});

t.test("the L2 takeover puts the proxy ARP entry back and announces the address", async (t) => {
  const ip: string[][] = [];
  const sysctl: string[] = [];
  const runner: Runner = {
    where: "",
    ip: async (a) => {
      ip.push(a);
      return "";
    },
    nft: async () => "",
    readSysctl: async () => "0",
    writeSysctl: async (k, v) => {
      sysctl.push(`${k}=${v}`);
    },
  };
  const execs: string[][] = [];
  const l2 = new L2Takeover(
    { outsideInterface: "out0", natAddresses: ["203.0.113.1"], count: 2 },
    runner,
    async (f, a) => {
      execs.push([f, ...a]);
      return "";
    },
  );
  await l2.active();
  t.same(ip, [["neigh", "replace", "proxy", "203.0.113.1", "dev", "out0"]]);
  t.same(execs, [
    ["arping", "-q", "-U", "-c", "1", "-I", "out0", "-s", "203.0.113.1", "203.0.113.1"],
    ["arping", "-q", "-U", "-c", "1", "-I", "out0", "-s", "203.0.113.1", "203.0.113.1"],
  ]);
  t.same(
    sysctl,
    ["net/ipv4/ip_nonlocal_bind=1", "net/ipv4/ip_nonlocal_bind=0"],
    "set for arping, put back",
  );
  await l2.standby();
  t.same(ip[1], ["neigh", "del", "proxy", "203.0.113.1", "dev", "out0"]);
});
