/**
 * An nmap SYN scan of all 65,535 TCP ports of one address, fast and bounded (no retries, 20,000
 * probes/s at least, 100 ms round trips at most, 120 s per host), as the policy and shared-address
 * lab tests run it against the NAT address. The target must be an address of the lab's own
 * namespaces.
 */
import type { ExecResult, Lab, Role } from "./lab.js";

/** nmap's timing for every lab scan: fast and bounded (no retries, 20,000 probes/s at least,
 * 50-100 ms round trips, 120 s per host). */
export const NMAP_FAST = [
  "-T5",
  "--max-retries",
  "0",
  "--min-rate",
  "20000",
  "--initial-rtt-timeout",
  "50ms",
  "--max-rtt-timeout",
  "100ms",
  "--host-timeout",
  "120s",
];

export interface TcpScan extends ExecResult {
  /** The ports nmap found open, in order. */
  open: string[];
  /** How many ports nmap reported filtered (no answer), 0 when it reported none so. */
  filtered: number;
}

export async function scanAllTcp(lab: Lab, from: Role, target: string): Promise<TcpScan> {
  const r = await lab.exec(
    from,
    ["nmap", "-n", "-Pn", "-sS", "-p", "1-65535", ...NMAP_FAST, "-oX", "-", target],
    { timeoutMs: 150_000 },
  );
  const open = [...r.stdout.matchAll(/portid="(\d+)"><state state="open"/g)].map(
    (m) => m[1] as string,
  );
  const filtered = Number(/<extraports state="filtered" count="(\d+)"/.exec(r.stdout)?.[1] ?? 0);
  return { ...r, open, filtered };
}
