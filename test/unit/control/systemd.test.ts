/**
 * The notify protocol as the daemon speaks it (src/control/systemd.ts), with the datagrams
 * captured: the addon's own send is tested against a real socket in test/unit/io/notify.test.ts,
 * and a real systemd reads them in test/artefacts/systemd-boot.sh.
 */
import { PassThrough } from "node:stream";
import t from "tap";
import { createLogger } from "../../../src/control/log.js";
import { SystemdNotifier } from "../../../src/control/systemd.js";

function make(env: Record<string, string | undefined>) {
  const sent: string[] = [];
  const logged: string[] = [];
  const out = new PassThrough();
  out.setEncoding("utf8");
  out.on("data", (d: string) => logged.push(d));
  const log = createLogger({ destination: out, journal: false });
  const n = new SystemdNotifier({ log, env, send: (m) => sent.push(m) });
  return { n, sent, logged };
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
};

t.test("ready, reload and stop send the messages systemd expects", async (t) => {
  const { n, sent } = make({ NOTIFY_SOCKET: "/run/x" });
  t.ok(n.enabled);
  n.ready("forwarding 10.0.1.0/24 via tunnat0 as 192.0.2.1");
  n.reloading();
  n.ready("forwarding again");
  n.stopping();
  t.equal(sent[0], "READY=1\nSTATUS=forwarding 10.0.1.0/24 via tunnat0 as 192.0.2.1");
  t.match(sent[1], /^RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=\d+$/);
  t.equal(sent[2], "READY=1\nSTATUS=forwarding again");
  t.match(sent[3], /^STOPPING=1\n/);
});

t.test("the watchdog pings while healthy and withholds pings while not", async (t) => {
  const { n, sent, logged } = make({
    NOTIFY_SOCKET: "/run/x",
    WATCHDOG_USEC: "20000",
    WATCHDOG_PID: String(process.pid),
  });
  t.equal(n.watchdogIntervalMs(), 10, "half of WATCHDOG_USEC");
  let health: string | null = null;
  n.startWatchdog(() => health);
  t.teardown(() => n.stopWatchdog());
  await until(() => sent.filter((m) => m === "WATCHDOG=1").length >= 3);
  t.ok(sent.filter((m) => m === "WATCHDOG=1").length >= 3, "pings while healthy");
  health = "no batch or tick for 6 s";
  await until(() => sent.includes("STATUS=unhealthy: no batch or tick for 6 s"));
  const mark = sent.length;
  await until(() => sent.length >= mark + 3);
  t.notOk(sent.slice(mark).includes("WATCHDOG=1"), "no ping while unhealthy");
  t.match(logged.join(""), /watchdog pings withheld/);
  health = null;
  await until(() => sent.slice(mark).includes("WATCHDOG=1"));
  t.ok(sent.slice(mark).includes("STATUS=forwarding"), "status back to forwarding");
  n.stopping();
  const after = sent.length;
  await new Promise((r) => setTimeout(r, 50));
  t.equal(sent.length, after, "stopping ends the pings");
});

t.test(
  "no watchdog without WATCHDOG_USEC or for another pid; nothing without a socket",
  async (t) => {
    t.equal(make({ NOTIFY_SOCKET: "/run/x" }).n.watchdogIntervalMs(), undefined);
    t.equal(
      make({
        NOTIFY_SOCKET: "/run/x",
        WATCHDOG_USEC: "1000000",
        WATCHDOG_PID: "1",
      }).n.watchdogIntervalMs(),
      undefined,
    );
    const none = new SystemdNotifier({
      log: createLogger({ destination: new PassThrough() }),
      env: {},
    });
    t.notOk(none.enabled);
    none.ready("x"); // does nothing, throws nothing
  },
);

t.test("a failing send is logged once and never thrown", async (t) => {
  const logged: string[] = [];
  const out = new PassThrough();
  out.setEncoding("utf8");
  out.on("data", (d: string) => logged.push(d));
  const n = new SystemdNotifier({
    log: createLogger({ destination: out, journal: false }),
    env: { NOTIFY_SOCKET: "/run/x" },
    send: () => {
      throw new Error("ECONNREFUSED");
    },
  });
  n.ready("a");
  n.status("b");
  await new Promise((r) => setImmediate(r));
  t.equal(logged.filter((l) => l.includes("cannot notify systemd")).length, 1);
});
