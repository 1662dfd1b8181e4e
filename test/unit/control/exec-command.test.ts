/**
 * execCommand (src/control/plumbing.ts): how a failed `ip` reads in the daemon's warnings. A
 * command killed by a signal writes no stderr, so the message must name the signal; under
 * systemd's default KillMode this was the only trace of a proxy ARP entry left behind.
 */
import t from "tap";
import { CommandError, execCommand } from "../../../src/control/runner.js";

t.test("a command killed by a signal says which signal", async (t) => {
  const e = await execCommand("sh", ["-c", "kill -TERM $$"]).catch((x: unknown) => x);
  t.ok(e instanceof CommandError);
  t.match((e as CommandError).message, /killed by SIGTERM/);
});

t.test("a command that fails keeps its stderr and exit code", async (t) => {
  const e = await execCommand("sh", ["-c", "echo nope >&2; exit 3"]).catch((x: unknown) => x);
  t.ok(e instanceof CommandError);
  t.equal((e as CommandError).stderr.trim(), "nope");
  t.equal((e as CommandError).exitCode, 3);
});

t.test("output of a command that succeeds is returned", async (t) => {
  t.equal(await execCommand("sh", ["-c", "echo ok"]), "ok\n");
});
