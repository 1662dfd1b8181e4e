// The HA settings file: each bad field is named with its value (TUNNAT_ERR_CONFIG, exit 2), and a
// missing, short or group/other-readable key refuses the start.
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { exitCodeFor } from "../../../src/base/errors.js";
import { loadHaSettings, parseHaSettings } from "../../../src/ha/config.js";
import { parseFifoLine, readKeepalivedFifo } from "../../../src/ha/keepalived.js";

const dir = mkdtempSync(join(tmpdir(), "tunnat-ha-config-"));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const key = join(dir, "ha.key");
writeFileSync(key, `${"k".repeat(40)}\n`);
chmodSync(key, 0o600);
const base = { listen: "192.0.2.1:7470", peer: "192.0.2.2:7470", keyFile: key };

t.test("a good file gives the defaults", async (t) => {
  const s = parseHaSettings("f.json", base);
  t.equal(s.arbiter, "keepalived");
  t.same(s.listen, { host: "192.0.2.1", port: 7470 });
  t.equal(s.sync.heartbeatMs, 200);
  t.equal(s.sync.misses, 5);
  t.equal(s.sync.key.length, 40, "the trailing newline is not part of the key");
  t.equal(s.ec2, undefined);
});

t.test("each bad field is named with its value", async (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ arbiter: "vrrp" }, /"arbiter" is "vrrp"/],
    [{ listen: "192.0.2.1" }, /"listen" is "192.0.2.1"; expected an IPv4 ADDRESS:PORT/],
    [{ peer: "999.1.1.1:1" }, /"peer"/],
    [{ heartbeatMs: 5 }, /"heartbeatMs" is 5; expected an integer 20..10000/],
    [{ misses: 1.5 }, /"misses"/],
    [{ garp: "yes" }, /"garp" is "yes"/],
    [{ heartbeat: 200 }, /"heartbeat" is 200; expected no such field/],
    [{ ec2: { networkInterfaceId: "eni-1", routeTables: ["rt-1"] } }, /"ec2.routeTables"/],
    [{ ec2: { networkInterfaceId: "i-1", routeTables: [] } }, /"networkInterfaceId" is "i-1"/],
    [{ arbiter: "heartbeat", keepalivedFifo: "/run/x.fifo" }, /"keepalivedFifo"/],
    // Split brain: without EC2's route ownership nothing fences a heartbeat active on L2.
    [{ arbiter: "heartbeat" }, /"arbiter" is "heartbeat"; expected "keepalived" unless "ec2"/],
  ];
  for (const [over, re] of cases) {
    try {
      parseHaSettings("f.json", { ...base, ...over });
      t.fail(`accepted ${JSON.stringify(over)}`);
    } catch (e) {
      const err = e as { message: string; code: string };
      t.match(err.message, re, JSON.stringify(over));
      t.equal(exitCodeFor(err.code), 2, "exit 2");
    }
  }
});

t.test("the key must exist, be 32 bytes or more, and be readable by its owner only", async (t) => {
  t.throws(
    () => parseHaSettings("f.json", { ...base, keyFile: join(dir, "none") }),
    /cannot read the key file/,
  );
  const short = join(dir, "short.key");
  writeFileSync(short, "0123456789");
  chmodSync(short, 0o600);
  t.throws(
    () => parseHaSettings("f.json", { ...base, keyFile: short }),
    /has 10 bytes; at least 32/,
  );
  const open = join(dir, "open.key");
  writeFileSync(open, "k".repeat(40));
  chmodSync(open, 0o644);
  t.throws(
    () => parseHaSettings("f.json", { ...base, keyFile: open }),
    /readable by others \(mode 644\)/,
  );
  t.throws(() => parseHaSettings("f.json", { ...base, keyFile: "rel.key" }), /"keyFile"/);
  const file = join(dir, "bad.json");
  writeFileSync(file, "{not json");
  t.throws(() => loadHaSettings(file), /cannot read HA file/);
});

t.test("EC2 settings", async (t) => {
  const s = parseHaSettings("f.json", {
    ...base,
    arbiter: "heartbeat",
    ec2: {
      region: "eu-west-1",
      networkInterfaceId: "eni-0a1b",
      routeTables: ["rtb-01", "rtb-02"],
      allocationId: "eipalloc-0abc",
    },
  });
  t.same(s.ec2?.routeTables, ["rtb-01", "rtb-02"]);
  t.equal(s.ec2?.destination, "0.0.0.0/0");
  t.throws(
    () =>
      parseHaSettings("f.json", {
        ...base,
        ec2: {
          networkInterfaceId: "eni-1",
          routeTables: [],
          allocationId: "eipalloc-1",
          secondaryPrivateIp: "10.0.0.5",
        },
      }),
    /not both/,
  );
});

t.test("keepalived's FIFO lines give the state; a burst counts by its last line", async (t) => {
  t.equal(parseFifoLine('INSTANCE "inside" MASTER 150'), "MASTER");
  t.equal(parseFifoLine('INSTANCE "inside" BACKUP 150', "inside"), "BACKUP");
  t.equal(parseFifoLine('INSTANCE "other" MASTER 150', "inside"), null);
  t.equal(parseFifoLine('GROUP "g" MASTER'), null);
  t.equal(parseFifoLine("garbage"), null);
  const fifo = join(dir, "k.fifo");
  const states: string[] = [];
  const r = await readKeepalivedFifo(fifo, "inside", (s) => states.push(s));
  // keepalived writes lines; a burst written at once collapses to its last state.
  writeFileSync(fifo, 'INSTANCE "inside" MASTER 150\nINSTANCE "inside" FAULT 150\n');
  for (let i = 0; i < 50 && states.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  writeFileSync(fifo, 'INSTANCE "inside" BACKUP 150\n');
  for (let i = 0; i < 50 && states.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  r.close();
  t.same(states, ["FAULT", "BACKUP"]);
});
