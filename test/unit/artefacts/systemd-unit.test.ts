/**
 * The shipped deployment files agree with the daemon: the example config and the sysctl file
 * are what `tunnat run` accepts and needs, the unit starts it the way the docs say, and the
 * inside-prefix arithmetic of the EC2 script is right. The unit's sandbox score is checked by
 * test/artefacts/systemd-security.sh, and its privileges in the lab by test/netns/ec2-instance.test.ts.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { loadConfig } from "../../../src/control/config.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const read = (p: string) => readFileSync(join(ROOT, p), "utf8");
const unit = read("systemd/tunnat.service");

function directive(key: string): string[] {
  return [...unit.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].map((m) => m[1] ?? "");
}

t.test("the unit runs `tunnat run` on /etc/tunnat/tunnat.json as a non-root user", async (t) => {
  t.same(directive("ExecStart"), ["/usr/bin/tunnat run --config /etc/tunnat/tunnat.json"]);
  t.same(directive("User"), ["tunnat"]);
  t.match(read("systemd/tunnat.sysusers"), /^u tunnat /m, "sysusers creates that user");
  t.same(directive("AmbientCapabilities"), ["CAP_NET_ADMIN"]);
  t.same(directive("CapabilityBoundingSet"), ["CAP_NET_ADMIN"]);
  t.same(directive("NoNewPrivileges"), ["yes"]);
  t.same(directive("DeviceAllow"), ["/dev/net/tun rw"]);
  t.same(directive("RuntimeDirectory"), ["tunnat"], "/run/tunnat for the control socket");
  t.same(directive("MemoryDenyWriteExecute"), [], "not set: node's JIT needs W+X memory");
  t.same(directive("ProcSubset"), [], "not set: a subset=pid /proc has no /proc/sys");
});

t.test("the unit is Type=notify with a watchdog, restarts forever, and keeps state", async (t) => {
  t.same(directive("Type"), ["notify"]);
  t.same(directive("NotifyAccess"), ["main"]);
  t.match(directive("WatchdogSec")[0], /^[1-9]\d*s$/);
  t.same(directive("Restart"), ["on-failure"]);
  t.same(directive("KillMode"), ["mixed"], "SIGTERM to the daemon, not to its `ip` commands");
  t.same(directive("StartLimitIntervalSec"), ["0"], "no start limit: never gives up");
  t.same(directive("StateDirectory"), ["tunnat"], "$STATE_DIRECTORY: the plumbing journal");
  t.same(directive("LogsDirectory"), ["tunnat"], "/var/log/tunnat for the mapping log");
  t.same(directive("Environment"), ["TUNNAT_CONTROL_SOCKET_GROUP=tunnat"]);
  const cfg = loadConfig({
    flags: { config: join(ROOT, "systemd", "tunnat.json") },
    env: { STATE_DIRECTORY: "/var/lib/tunnat" },
  });
  t.equal(cfg.control.stateFile, "/var/lib/tunnat/plumbing.json");
});

t.test("the unit's ExecStartPre applies the sysctl file the docs install", async (t) => {
  t.same(
    directive("ExecStartPre")[0],
    "+/usr/lib/systemd/systemd-sysctl /etc/sysctl.d/60-tunnat.conf",
  );
  t.match(
    directive("ExecStartPre")[1],
    /^\+\/bin\/sh -c .*chgrp tunnat \/dev\/net\/tun && chmod g\+rw \/dev\/net\/tun/,
    "the second gives group tunnat rw on /dev/net/tun when the user cannot open it",
  );
  const sysctl = read("systemd/tunnat.sysctl");
  t.match(sysctl, /^net\.ipv4\.ip_forward = 1$/m);
  // The daemon wants its TUN at rp_filter 2 and cannot write it under ProtectKernelTunables.
  t.match(sysctl, /^net\.ipv4\.conf\.default\.rp_filter = 2$/m);
  t.match(sysctl, /^-net\.ipv4\.conf\.tunnat0\.rp_filter = 2$/m);
  t.same(directive("ProtectKernelTunables"), ["yes"]);
});

t.test("the example /etc/tunnat/tunnat.json is a valid tunnat config", async (t) => {
  const file = join(ROOT, "systemd", "tunnat.json");
  const cfg = loadConfig({ flags: { config: file }, env: {} });
  t.equal(cfg.control.insideInterface, "ens5");
  t.equal(cfg.control.outsideInterface, "ens5", "single ENI: inside and outside are one");
  t.equal(cfg.control.preset, "aws");
  t.equal(cfg.nat.natAddresses.length, 1);
});

t.test("the EC2 script's inside prefixes are the VPC without the instance's subnet", async (t) => {
  const sub = (...args: string[]) =>
    spawnSync("bash", [join(ROOT, "deploy", "cidr-subtract.sh"), ...args], {
      encoding: "utf8",
    }).stdout.trim();
  t.equal(
    sub("10.0.0.0/16", "--", "10.0.0.0/24"),
    "10.0.1.0/24 10.0.2.0/23 10.0.4.0/22 10.0.8.0/21 10.0.16.0/20 10.0.32.0/19 10.0.64.0/18 10.0.128.0/17",
  );
  t.equal(sub("10.0.0.0/16", "--", "10.0.128.0/17"), "10.0.0.0/17");
  t.equal(sub("10.0.1.0/24", "172.16.0.0/16", "--", "172.16.0.0/16"), "10.0.1.0/24");
  t.equal(
    sub("10.0.0.0/16", "--", "192.168.0.0/24"),
    "10.0.0.0/16",
    "a subnet elsewhere changes nothing",
  );
  t.equal(sub("10.0.0.0/24", "--", "10.0.0.0/16"), "", "a covering subnet leaves nothing");
});
