/**
 * Static port forwards (DNAT): inbound connections to (NAT address, port) reach one inside host.
 * They are the only way in from outside; everything else stays dropped silently. The flow table
 * reserves each forward's outside port on its NAT addresses (never handed out to a dynamic
 * mapping); this module finds the forward of an inbound packet and counts per forward.
 *
 * find() is one typed-array read per (protocol, port), then the few forwards that share the port
 * (one per NAT address at most). Nothing is allocated after construction.
 */
import type { Forward } from "./config.js";

export class Forwards {
  readonly list: readonly Forward[];
  /** Flows opened per forward. */
  readonly flows: Float64Array;
  /** Packets per forward, outside to inside and back. */
  readonly packetsIn: Float64Array;
  readonly packetsOut: Float64Array;
  /** Connections refused per forward because the table was full. */
  readonly refused: Float64Array;
  /** First forward + 1 for (TCP 0 / UDP 1) << 16 | port; 0 = none. */
  private readonly head: Int32Array;
  /** Next forward + 1 with the same protocol and port. */
  private readonly next: Int32Array;
  private readonly nat: Uint32Array;
  /** 1 when the forward listens on every NAT address. */
  private readonly any: Uint8Array;
  readonly inside: Uint32Array;
  readonly insidePort: Uint16Array;

  constructor(list: readonly Forward[]) {
    const n = list.length;
    this.list = list;
    this.flows = new Float64Array(n);
    this.packetsIn = new Float64Array(n);
    this.packetsOut = new Float64Array(n);
    this.refused = new Float64Array(n);
    this.head = new Int32Array(n > 0 ? 2 << 16 : 0);
    this.next = new Int32Array(n);
    this.nat = new Uint32Array(n);
    this.any = new Uint8Array(n);
    this.inside = new Uint32Array(n);
    this.insidePort = new Uint16Array(n);
    for (let i = n - 1; i >= 0; i--) {
      const f = list[i] as Forward;
      const k = ((f.proto === 6 ? 0 : 1) << 16) | f.port;
      this.next[i] = this.head[k] as number;
      this.head[k] = i + 1;
      this.nat[i] = f.natAddress === null ? 0 : f.natAddress >>> 0;
      this.any[i] = f.natAddress === null ? 1 : 0;
      this.inside[i] = f.inside >>> 0;
      this.insidePort[i] = f.insidePort;
    }
  }

  get size(): number {
    return this.list.length;
  }

  /** The forward for an inbound TCP/UDP packet to (oaddr, oport), or -1. */
  find(proto: number, oaddr: number, oport: number): number {
    if (this.head.length === 0) return -1;
    let i = (this.head[((proto === 6 ? 0 : 1) << 16) | oport] as number) - 1;
    while (i >= 0) {
      if (this.any[i] === 1 || this.nat[i] === oaddr >>> 0) return i;
      i = (this.next[i] as number) - 1;
    }
    return -1;
  }
}
