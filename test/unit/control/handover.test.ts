/**
 * The handover restart's pure parts (control/handover.ts): which settings a successor may not
 * change (handoverKey, keyDifferences), and the offer it reads from its environment. The whole
 * handover, with a real TUN and a real successor process, is test/netns/restart.test.ts.
 */
import t from "tap";
import { loadConfig } from "../../../src/control/config.js";
import { handoverKey } from "../../../src/control/daemon.js";
import { HANDOVER_ENV, keyDifferences, takeOffer } from "../../../src/control/handover.js";

const flags = {
  inside: "10.0.0.0/16",
  "nat-address": "198.51.100.7",
  "inside-interface": "eth1",
  "outside-interface": "eth0",
  "table-state-file": "/tmp/tunnat-test-table.state",
};
const key = (extra: Record<string, unknown> = {}) =>
  handoverKey(loadConfig({ flags: { ...flags, ...extra }, env: {} }));

t.test("the settings the kernel state is made of are the key", async (t) => {
  t.same(keyDifferences(key(), key()), [], "the same settings: nothing differs");
  t.same(
    keyDifferences(key(), key({ "log-level": "debug", "udp-timeout": "600s" })),
    [],
    "live settings may change",
  );
  t.same(keyDifferences(key(), key({ "nat-address": "198.51.100.8" })), ["plumbing"]);
  t.same(keyDifferences(key(), key({ "tun-queue-length": "2000" })), ["tunQueueLength"]);
  t.same(keyDifferences(key(), key({ tun: "tn9" })), ["plumbing", "tun"]);
  t.same(keyDifferences({ a: 1 }, { a: 1, b: 2 }), ["b"], "a field only one side has differs");
});

t.test("the offer in the environment", async (t) => {
  t.equal(takeOffer({}), undefined, "no offer: a normal start");
  t.throws(() => takeOffer({ [HANDOVER_ENV]: "{" }), /is not JSON/);
  t.throws(() => takeOffer({ [HANDOVER_ENV]: '{"pid":"x"}' }), /is not a handover offer/);
  const env: NodeJS.ProcessEnv = {
    [HANDOVER_ENV]: JSON.stringify({ pid: 1, tun: "tunnat0", fds: [3], key: {}, journal: [] }),
  };
  // An offer without an IPC channel to the old daemon is refused, and taken out of the
  // environment either way (a later successor must not inherit it).
  t.throws(() => takeOffer(env, false), /there is no channel to the previous daemon/);
  t.equal(env[HANDOVER_ENV], undefined, "the variable is removed");
});
