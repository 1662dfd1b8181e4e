/**
 * The arithmetic of `npm run bench`'s summary (test/bench/report.ts): medians, per-round ratios,
 * the CPU accounting and the split of UDP loss between the NAT path and the receiver. The bench
 * itself is not run here (speed is measured by the bench, never asserted by a test).
 */
import t from "tap";
import {
  busyWarnings,
  cpuUse,
  derive,
  FIGURES,
  fmt,
  limitNotes,
  median,
  pairedDifference,
  pairedRatio,
  quantile,
  type RawRecord,
  report,
  type Sample,
  summarize,
  udpCount,
} from "../../bench/report.js";

const CLK = 100;
/** A sample at time `t` with the /proc/stat fields given (jiffies) and the rest 0. */
function sample(
  t: number,
  cpu: Partial<Record<string, number>>,
  more: Partial<Sample> = {},
): Sample {
  const order = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
  return {
    t,
    cpu: [...order.map((k) => cpu[k] ?? 0), 0, 0],
    daemonTicks: 0,
    tunDropped: 0,
    udp: { inDatagrams: 0, noPorts: 0, inErrors: 0, rcvbufErrors: 0 },
    ...more,
  };
}

t.test("median and quantile", async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5, "the mean of the middle two");
  t.ok(Number.isNaN(median([])), "nothing: NaN, not 0");
  t.equal(median([1, Number.NaN, 3]), 2, "NaN is left out");
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  t.equal(quantile(xs, 0.5), 50);
  t.equal(quantile(xs, 0.99), 99);
  t.equal(quantile([7], 0.99), 7);
});

t.test("ratios are paired by round, then the median is taken", async (t) => {
  const kernel = new Map([
    [1, 10],
    [2, 20],
    [3, 40],
  ]);
  const tunnat = new Map([
    [1, 5],
    [2, 18],
    [3, 36],
  ]);
  // per round: 0.5, 0.9, 0.9 -> 0.9; the ratio of the medians would be 18/20 = 0.9 too, but a
  // round missing one mode must not pair with another round's value:
  t.equal(pairedRatio(kernel, tunnat), 0.9);
  const missing = new Map([
    [1, 5],
    [3, 36],
  ]);
  t.equal(pairedRatio(kernel, missing), (0.5 + 0.9) / 2, "round 2 is left out, not mismatched");
  t.equal(pairedDifference(kernel, tunnat), -4, "the median of -5, -2 and -4");
});

t.test(
  "CPU use: NAT CPU is daemon + softirq; steal and other work are shares of the machine",
  async (t) => {
    // 2 CPUs over 1 s at 100 Hz: 200 jiffies in all.
    const a = sample(0, {}, { daemonTicks: 0 });
    const b = sample(
      1,
      { user: 60, system: 40, softirq: 30, steal: 20, idle: 50 },
      { daemonTicks: 50 },
    );
    const u = cpuUse(a, b, CLK, 0.3);
    t.equal(u.wallSeconds, 1);
    t.equal(u.daemonSeconds, 0.5);
    t.equal(u.softirqSeconds, 0.3);
    t.equal(u.natSeconds, 0.8);
    t.equal(u.hostBusySeconds, 1.3, "user + system + softirq");
    t.equal(u.stealPercent, 10);
    // other = 1.3 - 0.5 - 0.3 - 0.3 = 0.2 s of 2 s
    t.ok(Math.abs(u.otherPercent - 10) < 1e-9, `${u.otherPercent}`);
    t.equal(cpuUse(a, b, CLK, 5).otherPercent, 0, "never below 0");
  },
);

t.test("UDP: loss in the NAT path and at the receiver are counted apart", async (t) => {
  const a = sample(
    0,
    {},
    { tunDropped: 100, udp: { inDatagrams: 1000, noPorts: 0, inErrors: 5, rcvbufErrors: 5 } },
  );
  const b = sample(
    2,
    {},
    { tunDropped: 400, udp: { inDatagrams: 1600, noPorts: 0, inErrors: 55, rcvbufErrors: 55 } },
  );
  const c = udpCount(a, b, {
    size: 64,
    senders: [
      { packets: 600, seconds: 2, cpuSeconds: 1 },
      { packets: 400, seconds: 1.9, cpuSeconds: 1 },
    ],
    sink: { packets: 600 },
  });
  t.equal(c.sent, 1000);
  t.equal(c.arrived, 650, "delivered to sockets + the ones the socket could not take");
  t.equal(c.natPathLoss, 350, "sent - arrived");
  t.equal(c.tunDropped, 300, "of which the TUN dropped");
  t.equal(c.receiverLoss, 50, "the receiver's own loss");
  t.equal(c.read, 600);
  t.equal(c.seconds, 2);
});

const rec = (mode: string, round: number, test: string, tool: unknown, cpu = {}): RawRecord => ({
  mode,
  round,
  test,
  before: sample(0, {}),
  after: sample(2, { softirq: 20, user: 100, ...cpu }, { daemonTicks: mode === "tunnat" ? 60 : 0 }),
  tool,
  extra: { rssKb: mode === "tunnat" ? 204800 : 0 },
});
const tcp = (gbit: number) => ({
  streams: 1,
  bytes: (gbit * 1e9 * 2) / 8,
  seconds: 2,
  bitsPerSecond: gbit * 1e9,
  retransmits: 0,
  senderCpuPercent: 40,
  receiverCpuPercent: 30,
});

t.test("a TCP record yields Gbit/s, sender CPU and CPU per GB", async (t) => {
  const d = derive(rec("tunnat", 1, "tcp1", tcp(8)), CLK);
  t.equal(d.values.tcp1, 8);
  t.equal(d.values.tcp1_sender_cpu, 40);
  // 2 GB moved; NAT CPU = 0.6 s daemon + 0.2 s softirq
  t.ok(Math.abs((d.values.tcp1_cpu_gb ?? 0) - 0.4) < 1e-9, `${d.values.tcp1_cpu_gb}`);
  const full = derive(
    rec("tunnat", 1, "rr-full", { rate: 900, p50Us: 30, p99Us: 90, cpuSeconds: 0.1 }),
    CLK,
  );
  t.equal(full.values.rr_rate_full, 900);
  t.equal(full.values.rss_full, 200, "RSS in MiB");
});

t.test("summary rows: per-mode medians, the paired ratio and the added latency", async (t) => {
  const recs = [
    rec("kernel", 1, "tcp1", tcp(10)),
    rec("tunnat", 1, "tcp1", tcp(8)),
    rec("kernel", 2, "tcp1", tcp(12)),
    rec("tunnat", 2, "tcp1", tcp(12)),
    rec("kernel", 1, "ping", { sent: 3, rttMs: [0.1, 0.1, 0.2] }),
    rec("tunnat", 1, "ping", { sent: 3, rttMs: [0.15, 0.15, 0.3] }),
  ];
  const rows = summarize(recs.map((r) => derive(r, CLK)));
  const tcp1 = rows.find((r) => r.id === "tcp1");
  t.equal(tcp1?.modes.kernel?.median, 11);
  t.equal(tcp1?.modes.tunnat?.median, 10);
  t.equal(tcp1?.ratio, 0.9, "median of 0.8 and 1.0");
  t.equal(tcp1?.target, ">= 0.9");
  const ping = rows.find((r) => r.id === "ping_p50");
  t.ok(Math.abs((ping?.difference ?? 0) - 50) < 1e-9, "tunnat adds 50 µs at the median");
  t.notOk(
    rows.some((r) => r.id === "udp64_delivered"),
    "figures no record measured are left out",
  );
  const ids = new Set(FIGURES.map((f) => f.id));
  t.equal(ids.size, FIGURES.length, "figure ids are unique");
});

t.test("a busy run is named in the warnings", async (t) => {
  const quiet = derive(rec("kernel", 1, "tcp1", tcp(10)), CLK);
  // 3.2 s busy of 3.7 s: 1.4 s are the endpoints, 0.2 s softirq, the rest someone else's.
  const busy = derive(rec("kernel", 2, "tcp1", tcp(10), { user: 300, steal: 50, idle: 0 }), CLK);
  t.same(busyWarnings([quiet]).length, 0);
  const w = busyWarnings([quiet, busy]);
  t.equal(w.length, 1);
  t.match(w[0], /round 2 kernel tcp1: other processes .*stole/);
});

t.test(
  "the report prints the table with its legend and writes every row to the JSON",
  async (t) => {
    const lines = [rec("kernel", 1, "tcp1", tcp(10)), rec("tunnat", 1, "tcp1", tcp(9))]
      .map((r) => JSON.stringify(r))
      .join("\n");
    const { text, json } = report(`${lines}\n`, {
      rounds: 1,
      seconds: 2,
      quick: true,
      flows: 0,
      queues: null,
      clkTck: CLK,
      cpus: 2,
      loadBefore: "0.1 0.1 0.1",
      loadAfter: "0.2 0.1 0.1",
      maxFlows: 262144,
      wake: { idleMs: 20, p50Us: 93, p90Us: 400, p99Us: 4000 },
    });
    t.match(
      text,
      /after 20 ms idle takes 93 µs \(median; p90 400, p99 4000\)/,
      "the idle wake-up cost",
    );
    t.match(text, /figure\s+unit\s+kernel\s+tunnat\s+tunnat\/kernel\s+tunnat-kernel\s+target/);
    t.match(text, /TCP, 1 stream\s+Gbit\/s\s+10\.0\s+9\.00\s+0\.90x\s+>= 0\.9/);
    t.match(text, /target {9}issue 11's target/, "the legend explains the target column");
    const j = json as { rows: { id: string }[]; meta: { quick: boolean } };
    t.ok(j.rows.some((r) => r.id === "tcp1"));
    t.equal(j.meta.quick, true);
  },
);

t.test("a mode that carried all the UDP offered is named as load-limited", async (t) => {
  const udp = (mode: string, arrivedShare: number): RawRecord => {
    const r = rec(mode, 1, "udp64", {
      size: 64,
      senders: [{ packets: 1000, seconds: 2, cpuSeconds: 1.9 }],
      sink: { packets: 1000 * arrivedShare },
    });
    r.after.udp.inDatagrams = 1000 * arrivedShare;
    return r;
  };
  const notes = limitNotes(
    summarize([udp("kernel", 1), udp("tunnat", 0.5)].map((r) => derive(r, CLK))),
  );
  t.equal(notes.length, 1);
  t.match(notes[0], /^UDP 64 B, kernel: lost 0\.00%/);
});

t.test("numbers are printed with three significant digits", async (t) => {
  t.equal(fmt(137_000), "137k");
  t.equal(fmt(12_600), "12.6k");
  t.equal(fmt(13.14), "13.1");
  t.equal(fmt(0.886), "0.89");
  t.equal(fmt(25_000_000), "25.0M");
  t.equal(fmt(null), "-");
});
