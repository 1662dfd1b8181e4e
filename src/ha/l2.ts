/**
 * The NAT addresses on an L2 network (the lab, on-premises). The daemon's plumbing answers ARP
 * for them by proxy ARP on the outside interface; in a pair only the active may, so the standby
 * removes those entries and the new active puts them back and announces them with gratuitous
 * ARP (iputils arping -U, a few times), which moves the neighbours' cache entries to its MAC at
 * once instead of after their entries go stale. The inside gateway address is keepalived's VIP
 * and moves with VRRP, which sends its own gratuitous ARP.
 *
 * arping binds its probe socket to the announced address, which is not local (it is routed to
 * the TUN), so net.ipv4.ip_nonlocal_bind is set for the moments arping runs and put back.
 */
import { execFile } from "node:child_process";
import type { Takeover } from "./controller.js";

/** How the takeover reaches the kernel (control/runner.ts's Runner is one). */
export interface CommandRunner {
  ip(args: string[]): Promise<string>;
  readSysctl(key: string): Promise<string>;
  writeSysctl(key: string, value: string): Promise<void>;
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(file, args, { timeout: 10_000, encoding: "utf8" }, (e, out, err) =>
      e
        ? reject(new Error(`"${file} ${args.join(" ")}" failed: ${err.trim() || e.message}`))
        : resolve(out),
    ),
  );
}

export interface L2Spec {
  outsideInterface: string;
  natAddresses: string[];
  /** Gratuitous ARPs per address (250 ms apart). */
  count?: number;
}

const GONE = /No such file or directory|Cannot find|does not exist|No such device/i;

export class L2Takeover implements Takeover {
  readonly name = "garp";
  constructor(
    private readonly spec: L2Spec,
    private readonly runner: CommandRunner,
    private readonly exec: (file: string, args: string[]) => Promise<string> = run,
  ) {}

  async active(): Promise<void> {
    const s = this.spec;
    for (const a of s.natAddresses)
      await this.runner.ip(["neigh", "replace", "proxy", a, "dev", s.outsideInterface]);
    const key = "net/ipv4/ip_nonlocal_bind";
    const old = await this.runner.readSysctl(key).catch(() => "0");
    if (old !== "1") await this.runner.writeSysctl(key, "1");
    try {
      // arping's -i takes whole seconds and each run waits a second for answers that never come:
      // start one run per announcement, 250 ms apart, and wait for them all at the end.
      const runs: Promise<string>[] = [];
      for (let i = 0; i < (s.count ?? 3); i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 250));
        for (const a of s.natAddresses)
          runs.push(
            this.exec("arping", ["-q", "-U", "-c", "1", "-I", s.outsideInterface, "-s", a, a]),
          );
      }
      await Promise.all(runs);
    } finally {
      if (old !== "1") await this.runner.writeSysctl(key, old).catch(() => undefined);
    }
  }

  async standby(): Promise<void> {
    const s = this.spec;
    for (const a of s.natAddresses)
      await this.runner
        .ip(["neigh", "del", "proxy", a, "dev", s.outsideInterface])
        .catch((e: unknown) => {
          if (!GONE.test(e instanceof Error ? e.message : String(e))) throw e;
        });
  }
}
