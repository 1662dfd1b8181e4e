/**
 * A translator on a manual clock with the lab's addressing, so a test reads as the packets it
 * sends and the packets it expects back.
 */
import type { Clock } from "../../src/base/clock.js";
import { ManualClock } from "../../src/base/clock.js";
import { type FlowHooks, FlowTable } from "../../src/conntrack/table.js";
import { defaultNatConfig, type NatConfig } from "../../src/nat/config.js";
import { NatStats } from "../../src/nat/stats.js";
import { Translator, Verdict } from "../../src/nat/translate.js";
import { build, ip, type Parsed, type PktSpec, parse } from "./packet.js";

export const P1 = "10.0.1.2";
export const P2 = "10.0.1.3";
export const NAT = "203.0.113.1";
export const NAT2 = "203.0.113.5";
export const SRV = "203.0.113.10";
export const SRV2 = "203.0.113.11";

export const SLOT = 65536 + 64;

export interface Result {
  verdict: Verdict;
  /** The bytes to send (a copy), empty when dropped. */
  out: Uint8Array;
  /** Parsed output, undefined when dropped. */
  pkt: Parsed | undefined;
  dropReason: number;
}

/** A translator with its own connection table, built the way the daemon builds them. */
export function newTranslator(
  cfg: NatConfig,
  clock: Clock,
  stats: NatStats,
  hooks?: FlowHooks,
): Translator {
  return new Translator(cfg, new FlowTable(cfg, stats, hooks), clock, stats);
}

export class NatHarness {
  readonly clock = new ManualClock();
  readonly stats = new NatStats();
  readonly nat: Translator;
  readonly cfg: NatConfig;
  private readonly slot = new Uint8Array(SLOT);

  constructor(over: Partial<NatConfig> = {}) {
    this.cfg = defaultNatConfig({
      natAddresses: [ip(NAT)],
      inside: [{ addr: ip("10.0.1.0"), len: 24 }],
      maxFlows: 4096,
      hashSeed: 12345,
      ...over,
    });
    this.nat = newTranslator(this.cfg, this.clock, this.stats);
  }

  /** Run raw bytes through the translator at a fixed slot offset 0. */
  processBytes(bytes: Uint8Array): Result {
    this.slot.set(bytes, 0);
    const verdict = this.nat.process(this.slot, 0, bytes.length);
    if (verdict === Verdict.Drop) {
      return { verdict, out: new Uint8Array(0), pkt: undefined, dropReason: this.nat.lastDrop };
    }
    const out = this.slot.slice(0, this.nat.outLen);
    return { verdict, out, pkt: parse(out), dropReason: -1 };
  }

  send(spec: PktSpec): Result {
    return this.processBytes(build(spec));
  }

  /** Seconds forward on the manual clock. */
  wait(seconds: number): void {
    this.clock.advanceSeconds(seconds);
  }
}

export { Verdict };
