/**
 * Who may make a flow, beyond there being room and a port: the per-host mapping quota for
 * outbound flows (RFC 6888 REQ-4), and the filtering mode for inbound packets that match no flow
 * (RFC 4787 REQ-8, RFC 5382 REQ-3). Pure policy over state the table keeps; no allocation.
 */
import { PROTO_SLOTS } from "../base/protocols.js";
import type { ConntrackConfig } from "./config.js";
import { nextPow2 } from "./hash.js";
import type { HostTable } from "./hosts.js";
import { Refusal } from "./refusal.js";
import { RemoteSet } from "./remotes.js";

const FILTER_APDF = 0;
const FILTER_ADF = 1;
const FILTER_EIF = 2;

export class Admission {
  private readonly filtering: number;
  private readonly quota: number;
  /** Address-dependent filtering: the remote addresses each mapping has flows to. */
  private readonly remotes: RemoteSet | null;

  constructor(
    cfg: ConntrackConfig,
    /** Endpoint-independent mapping (else per-destination: no mapping accepts a new remote). */
    private readonly eim: boolean,
    private readonly hosts: HostTable,
    capacity: number,
    seed: number,
  ) {
    this.filtering =
      cfg.filtering === "endpoint-independent"
        ? FILTER_EIF
        : cfg.filtering === "address-dependent"
          ? FILTER_ADF
          : FILTER_APDF;
    this.quota = cfg.perHostQuota;
    this.remotes =
      eim && this.filtering === FILTER_ADF
        ? new RemoteSet(Math.max(16, nextPow2(capacity) / 2), seed)
        : null;
  }

  /** May inside host `iaddr` make one more mapping for protocol slot `pi`? */
  quotaAllows(iaddr: number, pi: number): boolean {
    if (this.quota <= 0) return true;
    const s = this.hosts.find(iaddr);
    // A host the full host table cannot track cannot have its quota enforced: refuse it.
    if (s < 0) return !this.hosts.full;
    return this.hosts.maps[s * PROTO_SLOTS + pi]! < this.quota;
  }

  /**
   * An inbound packet from `raddr` to mapping `m` matched no flow: -1 if the filtering mode lets
   * it open one (always with endpoint-independent filtering; with address-dependent filtering if
   * the mapping has a flow to raddr; never with address-and-port-dependent filtering, nor in
   * per-destination mode, whose ports several inside endpoints may share), else Refusal.Filtered.
   */
  inboundRefusal(m: number, raddr: number): number {
    if (!this.eim || this.filtering === FILTER_APDF) return Refusal.Filtered;
    if (this.filtering === FILTER_ADF && !(this.remotes as RemoteSet).has(m, raddr)) {
      return Refusal.Filtered;
    }
    return -1;
  }

  /** A flow of mapping `m` (-1 in per-destination mode) to `raddr` was made. */
  flowAdded(m: number, raddr: number): void {
    if (this.remotes !== null) this.remotes.add(m, raddr);
  }

  /** A flow of mapping `m` to `raddr` went. */
  flowRemoved(m: number, raddr: number): void {
    if (this.remotes !== null) this.remotes.remove(m, raddr);
  }

  memoryBytes(): number {
    return this.remotes === null ? 0 : this.remotes.memoryBytes();
  }
}
