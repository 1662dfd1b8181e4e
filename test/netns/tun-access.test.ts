/**
 * /dev/net/tun permissions (DAC), for the daemon as systemd/tunnat.service runs it: a uid that is
 * not root, CAP_NET_ADMIN only. CAP_NET_ADMIN does not override file modes, so on a host where
 * /dev/net/tun is 0600 root the open fails with EACCES; the daemon must say that (and what to
 * do), not tell the user to load a module. With group rw for the daemon's group, as the unit's
 * ExecStartPre= gives it, the daemon starts.
 *
 * Each run is inside a network namespace of its own (tna-<pid>) and a private mount namespace in
 * which a fresh device node (char 10,200) with the mode under test is bound over /dev/net/tun;
 * the machine's own node is never touched.
 */
import { spawn, spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const NS = `tna-${process.pid}`;
const UID = 62000 + (process.pid % 1000);

const missing = ["ip", "setpriv", "unshare", "mknod"].filter(
  (c) => spawnSync("sh", ["-c", `command -v ${c}`]).status !== 0,
);
const skip =
  process.getuid?.() !== 0
    ? "needs root"
    : missing.length
      ? `missing ${missing.join(", ")}`
      : false;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `tunnat run` as UID with CAP_NET_ADMIN, /dev/net/tun = a node of `mode` owned by 0:`gid`. */
function runDaemon(mode: string, gid: number, stopAfterForwarding: boolean): Promise<Run> {
  const wrapper = [
    "set -e",
    "mount -t tmpfs -o mode=0755 tmpfs /run",
    `install -d -m 0750 -o ${UID} -g ${UID} /run/tunnat`,
    `mknod -m ${mode} /run/tun c 10 200`,
    `chown 0:${gid} /run/tun`,
    "mount --bind /run/tun /dev/net/tun",
    'exec "$@"',
  ].join("\n");
  const caps = "-all,+net_admin";
  const argv = [
    "ip",
    "netns",
    "exec",
    NS,
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    wrapper,
    "sh",
    "setpriv",
    `--reuid=${UID}`,
    `--regid=${UID}`,
    "--clear-groups",
    "--nnp",
    `--inh-caps=${caps}`,
    `--ambient-caps=${caps}`,
    `--bounding-set=${caps}`,
    process.execPath,
    join(ROOT, "bin", "tunnat.js"),
    "run",
    "--no-manage-routes",
    "--inside",
    "10.0.1.0/24",
    "--nat-address",
    "203.0.113.1",
    "--metrics",
    "127.0.0.1:9469",
    "--tun",
    "tna0",
  ];
  return new Promise((resolve) => {
    const child = spawn("env", ["-i", `PATH=${process.env.PATH ?? ""}`, ...argv], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const r: Run = { code: null, stdout: "", stderr: "" };
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.stdout.on("data", (d: Buffer) => {
      r.stdout += d.toString();
      // The signal handlers are installed right after the "forwarding" line: give them a moment.
      if (stopAfterForwarding && r.stdout.includes('"msg":"forwarding"'))
        setTimeout(() => child.kill("SIGTERM"), 500);
    });
    child.stderr.on("data", (d: Buffer) => {
      r.stderr += d.toString();
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      r.code = code;
      resolve(r);
    });
  });
}

t.test("/dev/net/tun permissions", { skip }, async (t) => {
  spawnSync("ip", ["netns", "add", NS]);
  t.teardown(() => {
    spawnSync("ip", ["netns", "del", NS]);
  });

  await t.test(
    "0600 root: refused with EACCES, the mode and the fix, no module advice",
    async (t) => {
      const r = await runDaemon("0600", 0, false);
      t.equal(r.code, 1, "exit 1");
      t.match(r.stderr, /TUNNAT_ERR_NO_TUN/);
      t.match(r.stderr, /mode 0600, uid 0, gid 0\) cannot be opened by uid \d+/);
      t.match(r.stderr, /EACCES/);
      t.match(r.stderr, /chgrp tunnat \/dev\/net\/tun; chmod 0660/, "says how to give access");
      t.notMatch(r.stderr, /modprobe/, "the module is loaded: do not send the user there");
    },
  );

  await t.test("0660 with the daemon's group (the unit's ExecStartPre): it starts", async (t) => {
    const r = await runDaemon("0660", UID, true);
    t.match(r.stdout, /"msg":"forwarding"/, r.stderr);
    t.equal(r.code, 0, "stopped cleanly by SIGTERM");
  });
});
