/**
 * Traffic per inside host with a bounded number of series: the top N hosts by bytes get a series
 * of their own, everything else is summed into host="other", so a fleet of a thousand hosts
 * cannot blow up a scrape.
 *
 * The counters must stay monotonic although hosts move in and out of the top N and leave the
 * table with their last flow. A host's own series is its cumulative total from the conntrack host
 * table (finished flows plus live ones). "other" is kept here as a running sum: at each scrape it
 * grows by the growth of all traffic minus the growth of the hosts exported now, so a host that
 * is promoted takes nothing away from it and a host that is demoted or leaves adds only new
 * traffic. Computed at scrape time; never per packet.
 */
import type { FlowTable } from "../conntrack/table.js";
import { formatIpv4 } from "../wire/addr.js";

/** Bytes and packets out (host to internet) and in (internet to host). */
export interface HostCounters {
  bytesOut: number;
  bytesIn: number;
  pktsOut: number;
  pktsIn: number;
}

export interface HostSeries extends HostCounters {
  /** Dotted quad, or "other". */
  host: string;
}

export const DEFAULT_TOP_HOSTS = 20;

/** What TopHosts reads: FlowTable's hostTraffic() and the totals of departed hosts. */
export type HostSource = Pick<FlowTable, "hostTraffic"> & {
  hosts: Pick<
    FlowTable["hosts"],
    "departedBytesOut" | "departedBytesIn" | "departedPktsOut" | "departedPktsIn"
  >;
};

const KEYS = ["bytesOut", "bytesIn", "pktsOut", "pktsIn"] as const;

function zero(): HostCounters {
  return { bytesOut: 0, bytesIn: 0, pktsOut: 0, pktsIn: 0 };
}

export class TopHosts {
  private prev = new Map<number, HostCounters>();
  private prevAll = zero();
  private readonly other = zero();

  constructor(
    private readonly source: HostSource,
    readonly limit = DEFAULT_TOP_HOSTS,
  ) {}

  /** The top `limit` hosts by bytes (out + in), then "other". Call once per scrape. */
  collect(): HostSeries[] {
    const cur = new Map<number, HostCounters>();
    const all = zero();
    this.source.hostTraffic((addr, pktsOut, bytesOut, pktsIn, bytesIn) => {
      cur.set(addr, { bytesOut, bytesIn, pktsOut, pktsIn });
      all.bytesOut += bytesOut;
      all.bytesIn += bytesIn;
      all.pktsOut += pktsOut;
      all.pktsIn += pktsIn;
    });
    const h = this.source.hosts;
    all.bytesOut += h.departedBytesOut;
    all.bytesIn += h.departedBytesIn;
    all.pktsOut += h.departedPktsOut;
    all.pktsIn += h.departedPktsIn;

    const ranked = [...cur.entries()].sort(
      (a, b) => b[1].bytesOut + b[1].bytesIn - (a[1].bytesOut + a[1].bytesIn) || a[0] - b[0],
    );
    const top = ranked.slice(0, this.limit);
    for (const k of KEYS) {
      let exportedGrowth = 0;
      for (const [addr, c] of top)
        exportedGrowth += Math.max(0, c[k] - (this.prev.get(addr)?.[k] ?? 0));
      const growth = all[k] - this.prevAll[k] - exportedGrowth;
      if (growth > 0) this.other[k] += growth;
    }
    this.prev = cur;
    this.prevAll = all;
    const out: HostSeries[] = top.map(([addr, c]) => ({ host: formatIpv4(addr), ...c }));
    out.push({ host: "other", ...this.other });
    return out;
  }
}
