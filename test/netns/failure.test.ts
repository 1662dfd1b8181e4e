/**
 * A data path that fails for good (here: someone deletes the TUN under the running daemon) must
 * still end cleanly: the daemon notices, removes its routes and proxy-ARP entry (the guard stays,
 * so the inside is closed until the restart), and exits 1 so that systemd's Restart=on-failure
 * brings it back.
 *
 * Needs root. Namespaces are `tnfail-<pid>-*`, removed in teardown.
 */
import t from "tap";
import { Lab, missing, sleep } from "./helpers/lab.js";

const reason = missing([]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnfail");
  t.teardown(() => lab.down());

  t.test("a deleted TUN stops the daemon with exit 1 and leaves only the guard", async (t) => {
    const d = await lab.startDaemon();
    const before = await lab.sh("nat", ["ip", "rule"]);
    t.match(before, /lookup 4242/, "the policy rule is in place while running");
    const del = await lab.exec("nat", ["ip", "link", "del", "tunnat0"]);
    t.equal(del.code, 0, del.stderr);
    let code: number | null | undefined;
    const exited = d.exited.then((c) => {
      code = c;
    });
    for (let i = 0; i < 50 && code === undefined; i++) await sleep(100);
    await Promise.race([exited, sleep(100)]);
    t.equal(code, 1, "exits 1 within 5 s");
    // Its last lines may still be in the pipe when the exit is seen.
    for (let i = 0; i < 30 && !/data path failed/.test(d.out()); i++) await sleep(100);
    t.match(d.out(), /data path failed/, "and says why");
    // The guard stays (fail closed): the rule, and a table with only throw and prohibit routes.
    t.match(await lab.sh("nat", ["ip", "rule"]), /lookup 4242/, "the guard's rule stays");
    t.notMatch(
      await lab.sh("nat", ["ip", "route", "show", "table", "4242"]),
      /dev tunnat0/,
      "no route via the TUN left in its table",
    );
    t.match(
      await lab.sh("nat", ["ip", "route", "show", "table", "4242"]),
      /prohibit default/,
      "its prohibit default is there",
    );
    t.equal(
      (await lab.sh("nat", ["ip", "neigh", "show", "proxy"])).trim(),
      "",
      "no proxy entry left",
    );
    t.notMatch(
      await lab.sh("nat", ["ip", "route"]),
      new RegExp(lab.natAddress.replaceAll(".", "\\.")),
      "no NAT address route left",
    );
  });
}
