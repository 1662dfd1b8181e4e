/**
 * The owner check of a state file (src/control/owner.ts) on a fake /proc: a live pid is the
 * owner only when it is the same process (start time) and a `tunnat run`.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { ownerAlive, processStartTime, selfRecord } from "../../../src/control/owner.js";

const proc = mkdtempSync(join(tmpdir(), "tunnat-proc-"));
t.teardown(() => rmSync(proc, { recursive: true, force: true }));

/** A /proc/PID with the given comm, start time and argv. */
function fake(pid: number, comm: string, start: number, argv: string[]) {
  const d = join(proc, String(pid));
  mkdirSync(d, { recursive: true });
  // Fields 3..52 after "(comm)": state, then 18 more fields before starttime (field 22).
  const fields = [
    "S",
    ...Array.from({ length: 18 }, (_, i) => String(i + 4)),
    String(start),
    "0",
    "0",
  ];
  writeFileSync(join(d, "stat"), `${pid} (${comm}) ${fields.join(" ")}\n`);
  writeFileSync(join(d, "cmdline"), `${argv.join("\0")}\0`);
}

fake(100, "node", 5000, [
  "/usr/bin/node",
  "/usr/bin/tunnat",
  "run",
  "--config",
  "/etc/tunnat/tunnat.json",
]);
fake(101, "sleep", 5000, ["sleep", "60"]);
fake(102, "node", 6000, [
  "node",
  "/srv/tunnat/bin/tunnat.js",
  "run",
  "--tun",
  "tunnat1",
  "--control-socket",
  "/run/b.sock",
]);
fake(103, "we (ird) name", 7000, ["node", "bin/tunnat.js", "flows"]);

t.test("start time is field 22, even with spaces and parentheses in comm", async (t) => {
  t.equal(processStartTime(100, proc), "5000");
  t.equal(processStartTime(103, proc), "7000");
  t.equal(processStartTime(999, proc), null, "no such process");
  t.match(processStartTime("self") ?? "", /^\d+$/, "this process has one");
});

t.test("the owner is alive only if it is the same tunnat run", async (t) => {
  t.ok(
    ownerAlive({ pid: 100, startTime: "5000", tun: "tunnat0" }, proc),
    "same pid, time, a tunnat run",
  );
  t.notOk(
    ownerAlive({ pid: 100, startTime: "4999", tun: "tunnat0" }, proc),
    "pid reused (other start time)",
  );
  t.notOk(ownerAlive({ pid: 101, startTime: "5000" }, proc), "a live sleep is not a tunnat");
  t.notOk(ownerAlive({ pid: 101 }, proc), "not even without a recorded start time");
  t.notOk(ownerAlive({ pid: 999 }, proc), "a dead pid");
  t.notOk(ownerAlive({ pid: 103 }, proc), "tunnat flows is not a daemon");
  t.ok(
    ownerAlive({ pid: 102, tun: "tunnat1", controlSocket: "/run/b.sock" }, proc),
    "old file: cmdline decides",
  );
  t.notOk(ownerAlive({ pid: 102, tun: "tunnat0" }, proc), "another tunnat (its --tun differs)");
  t.notOk(
    ownerAlive({ pid: 102, controlSocket: "/run/a.sock" }, proc),
    "another tunnat (its socket differs)",
  );
  t.notOk(ownerAlive({ pid: 0 }, proc), "pid 0");
});

t.test("this process records its pid and start time", async (t) => {
  const r = selfRecord("tunnat0", "/run/x.sock");
  t.equal(r.pid, process.pid);
  t.equal(r.startTime, processStartTime("self"));
  t.equal(r.controlSocket, "/run/x.sock");
});
