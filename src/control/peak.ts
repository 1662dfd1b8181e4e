/**
 * Peak rates as the AWS NAT Gateway reports them (PeakBytesPerSecond, PeakPacketsPerSecond): the
 * highest 10-second average within the last minute. A 1 s timer (metrics.ts) samples the core's
 * cumulative counters into a ring; the peak is computed from the ring at scrape time. Nothing
 * here runs per packet.
 */

/** Seconds over which one average is taken. */
const PEAK_WINDOW_S = 10;
/** Seconds of history the peak looks back over. */
const PEAK_HISTORY_S = 60;

export class PeakRate {
  // One slot more than the history so the oldest window still has its start sample.
  private readonly size: number;
  private readonly t: Float64Array;
  private readonly bytes: Float64Array;
  private readonly packets: Float64Array;
  private head = 0;
  private count = 0;

  constructor(
    private readonly windowS = PEAK_WINDOW_S,
    private readonly historyS = PEAK_HISTORY_S,
  ) {
    // Samples arrive about once a second; keep a little slack for timer jitter.
    this.size = historyS + windowS + 4;
    this.t = new Float64Array(this.size);
    this.bytes = new Float64Array(this.size);
    this.packets = new Float64Array(this.size);
  }

  /** Record cumulative counters at time `tSec` (seconds, monotonic). */
  sample(tSec: number, bytes: number, packets: number): void {
    this.t[this.head] = tSec;
    this.bytes[this.head] = bytes;
    this.packets[this.head] = packets;
    this.head = (this.head + 1) % this.size;
    if (this.count < this.size) this.count++;
  }

  /**
   * Highest average rate over any `windowS`-second span that ends within the last `historyS`
   * seconds, as [bytes/s, packets/s]. A daemon younger than one window reports its average
   * since its first sample, so a short burst after start is not shown as 0.
   */
  peak(): [number, number] {
    let bestB = 0;
    let bestP = 0;
    if (this.count < 2) return [0, 0];
    const newest = this.t[(this.head - 1 + this.size) % this.size] as number;
    // Walk samples from newest to oldest; for each end sample find the latest start sample at
    // least `windowS` before it.
    for (let i = 0; i < this.count; i++) {
      const e = (this.head - 1 - i + 2 * this.size) % this.size;
      const te = this.t[e] as number;
      if (newest - te > this.historyS - this.windowS + 0.5) break;
      // The start sample: the newest one at least a window before the end; a daemon younger
      // than the window has none, and then its whole life (first to newest sample) stands in.
      let s = -1;
      for (let j = i + 1; j < this.count; j++) {
        const k = (this.head - 1 - j + 2 * this.size) % this.size;
        if (te - (this.t[k] as number) >= this.windowS - 0.5) {
          s = k;
          break;
        }
      }
      if (s < 0) {
        if (this.count === this.size || i !== 0) continue;
        s = (this.head - this.count + this.size) % this.size;
      }
      const dt = te - (this.t[s] as number);
      if (dt < 0.5) continue;
      const rb = ((this.bytes[e] as number) - (this.bytes[s] as number)) / dt;
      const rp = ((this.packets[e] as number) - (this.packets[s] as number)) / dt;
      if (rb > bestB) bestB = rb;
      if (rp > bestP) bestP = rp;
    }
    return [bestB, bestP];
  }
}
