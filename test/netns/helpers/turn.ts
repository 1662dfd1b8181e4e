/**
 * coturn as the RFC 5780 NAT-discovery peer of the lab tests (conformance.test.ts, queues.test.ts):
 * turnserver on inet with both of inet's addresses (RFC 5780 needs two listener IPs, and the
 * alternate port 3479), and turnutils_natdiscovery run from p1 against the first.
 *
 * Peer notes:
 * - Debian's /etc/turnserver.conf sets `no-rfc5780` (and `syslog`): with it turnserver never
 *   sends OTHER-ADDRESS, opens no alternate port, and natdiscovery prints no verdict at all. So
 *   turnserver runs with `-c` on an empty file; its pid file and user DB go to the lab's scratch
 *   directory.
 * - natdiscovery -f and -H wait ~3 s per unanswered probe ("STUN receive timeout.."), so a
 *   filtering run takes ~6 s when the NAT filters.
 *
 * Needs turnserver, turnutils_natdiscovery and ss; the caller skips what lacks them. The server
 * is a background process of the lab, killed by its down().
 */
import { writeFileSync } from "node:fs";
import { type ExecResult, type Lab, sleep } from "./lab.js";

export interface TurnPeer {
  /** Start turnserver once; true when it listens on both addresses (later calls: at once). */
  start(): Promise<boolean>;
  /** turnutils_natdiscovery FLAG (-m mapping, -f filtering, -H hairpinning) from p1. */
  natdiscovery(flag: string): Promise<ExecResult>;
}

export function turnPeer(lab: Lab): TurnPeer {
  const [inet, inet2] = lab.inet as [string, string];
  const tmp = lab.tmp;
  let up = false;
  return {
    async start() {
      if (up) return true;
      const conf = `${tmp}/turnserver.conf`;
      writeFileSync(conf, "# empty: overrides Debian's no-rfc5780 in /etc/turnserver.conf\n");
      const srv = lab.spawn("inet", [
        "turnserver",
        "-c",
        conf,
        "-L",
        inet,
        "-L",
        inet2,
        "--listening-port",
        "3478",
        "--stun-only",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--log-file",
        "stdout",
        "--simple-log",
        "--pidfile",
        `${tmp}/turnserver.pid`,
        "--userdb",
        `${tmp}/turndb`,
      ]);
      for (let i = 0; i < 100; i++) {
        const r = await lab.exec("inet", ["ss", "-lnuH", "sport = :3479"]);
        if (r.stdout.includes(inet) && r.stdout.includes(inet2)) {
          up = true;
          return true;
        }
        if (srv.child.exitCode !== null) break;
        await sleep(50);
      }
      return false;
    },
    natdiscovery: (flag) =>
      lab.exec("p1", ["turnutils_natdiscovery", flag, inet], { timeoutMs: 40_000 }),
  };
}

/** The reflexive (outside) addresses turnutils_natdiscovery reports, in order. */
export function reflexiveAddrs(stdout: string): string[] {
  return [...stdout.matchAll(/UDP reflexive addr: ([\d.]+:\d+)/g)].map((m) => m[1] as string);
}
