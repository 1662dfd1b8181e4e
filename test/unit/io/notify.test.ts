/**
 * sd_notify through the addon, against a real AF_UNIX datagram socket: python3 binds one (a path,
 * or a name in the abstract namespace as systemd's NOTIFY_SOCKET may be) and prints what it
 * receives. Needs python3 and the built addon; skipped with the reason otherwise.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { isErrnoError } from "../../../src/io/errno.js";
import { monotonicUsec, sdNotify } from "../../../src/io/notify.js";
import { addonPath } from "../../../src/io/tun.js";

const python = spawnSync("python3", ["-c", "pass"]).status === 0;
const skip = !python ? "python3 missing" : addonPath() === undefined ? "addon not built" : false;

// Binds the socket, prints "ready", then one line per datagram (JSON string of its text).
const LISTENER = `
import json, socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + name[1:] if name.startswith("@") else name)
print("ready", flush=True)
while True:
    data, _ = s.recvfrom(65536)
    print(json.dumps(data.decode()), flush=True)
`;

interface Listener {
  proc: ChildProcess;
  next(): Promise<string>;
}

function listen(name: string): Promise<Listener> {
  const proc = spawn("python3", ["-c", LISTENER, name], { stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = "";
  proc.stdout?.setEncoding("utf8");
  proc.stdout?.on("data", (d: string) => {
    buf += d;
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const w = waiters.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  const next = () =>
    new Promise<string>((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) return resolve(l);
      const timer = setTimeout(() => reject(new Error("no datagram in 10 s")), 10_000);
      waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
  return next().then((first) => {
    if (first !== "ready") throw new Error(`listener said ${first}`);
    return { proc, next };
  });
}

t.test("sd_notify", { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tunnat-notify-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  t.test("a message reaches a datagram socket bound to a path, byte for byte", async (t) => {
    const path = join(dir, "notify.sock");
    const l = await listen(path);
    t.teardown(() => l.proc.kill());
    const msg = "READY=1\nSTATUS=forwarding 10.0.1.0/24 -> 192.0.2.1 (ü)";
    t.equal(sdNotify(msg, path), "sent");
    t.equal(JSON.parse(await l.next()), msg);
    t.equal(sdNotify("WATCHDOG=1", path), "sent");
    t.equal(JSON.parse(await l.next()), "WATCHDOG=1", "each call is one datagram");
  });

  t.test("an '@' name is a socket in the abstract namespace", async (t) => {
    const name = `@tunnat-notify-test-${process.pid}`;
    const l = await listen(name);
    t.teardown(() => l.proc.kill());
    t.equal(sdNotify("STOPPING=1", name), "sent");
    t.equal(JSON.parse(await l.next()), "STOPPING=1");
  });

  t.test("NOTIFY_SOCKET is the default target, and without it nothing is sent", async (t) => {
    const path = join(dir, "env.sock");
    const l = await listen(path);
    t.teardown(() => l.proc.kill());
    const saved = process.env.NOTIFY_SOCKET;
    t.teardown(() => {
      if (saved === undefined) delete process.env.NOTIFY_SOCKET;
      else process.env.NOTIFY_SOCKET = saved;
    });
    delete process.env.NOTIFY_SOCKET;
    t.equal(sdNotify("READY=1"), "unset");
    process.env.NOTIFY_SOCKET = path;
    t.equal(sdNotify("STATUS=from env"), "sent");
    t.equal(JSON.parse(await l.next()), "STATUS=from env", "the first datagram is this one");
  });

  t.test("a socket nobody listens on fails with its errno, not silently", async (t) => {
    const err = (() => {
      try {
        sdNotify("READY=1", join(dir, "nobody.sock"));
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    t.ok(isErrnoError(err), "an errno error");
    t.equal((err as { code?: string }).code, "ENOENT");
    t.throws(() => sdNotify("READY=1", "relative.sock"), { code: "EINVAL" }, "not a path");
    t.throws(() => sdNotify("READY=1", `/${"x".repeat(200)}`), { code: "EINVAL" }, "too long");
  });

  t.test("MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds", async (t) => {
    const r = spawnSync("python3", ["-c", "import time; print(time.monotonic_ns() // 1000)"], {
      encoding: "utf8",
    });
    const theirs = BigInt(r.stdout.trim());
    const ours = monotonicUsec();
    const diff = ours > theirs ? ours - theirs : theirs - ours;
    t.ok(diff < 5_000_000n, `within 5 s of python's monotonic clock (diff ${diff} us)`);
  });
});
