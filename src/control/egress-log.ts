/**
 * The egress policy's log: refusals are counted per packet path event by the core (nat/egress.ts)
 * and logged here, off the data path, at most one line per LOG_INTERVAL_MS however many flows
 * are refused: how many since the last line, and the last one's rule and tuple.
 */

import type { Logger } from "pino";
import type { EgressPolicy } from "../nat/egress.js";
import { formatIpv4 } from "../wire/addr.js";

/** At most one refusal line per 10 s. */
const LOG_INTERVAL_MS = 10_000;
const TICK_MS = 1000;
const PROTO_NAMES: Record<number, string> = { 1: "icmp", 6: "tcp", 17: "udp" };

/** Start the rate-limited refusal log over the policy in force; returns its stop(). */
export function startEgressLog(egress: () => EgressPolicy, log: Logger): () => void {
  let policy: EgressPolicy | null = null;
  let seen = 0;
  let lastLog = 0;
  const tick = () => {
    const p = egress();
    if (p !== policy) {
      policy = p;
      seen = 0;
    }
    const n = p.refusals - seen;
    const now = Date.now();
    if (n <= 0 || now - lastLog < LOG_INTERVAL_MS) return;
    seen = p.refusals;
    lastLog = now;
    const r = p.rules[p.lastRule];
    log.warn(
      {
        refused: n,
        rule: p.lastRule + 1,
        text: r?.text,
        last: {
          proto: PROTO_NAMES[p.lastProto] ?? String(p.lastProto),
          src: formatIpv4(p.lastSrc),
          dst: formatIpv4(p.lastDst),
          port: p.lastPort,
        },
      },
      `egress rules refused ${n} new flow${n === 1 ? "" : "s"}`,
    );
  };
  const timer = setInterval(tick, TICK_MS);
  timer.unref();
  return () => clearInterval(timer);
}
