/**
 * Observability against the real daemon in the lab (root; skipped otherwise):
 *
 *   p1 (10.0.1.2) -- br-in -- [nat: tunnat0, tunnat run, prometheus] -- out0 -- inet (.10)
 *
 * A real Prometheus (Debian's /usr/bin/prometheus) runs in the nat namespace with a temporary
 * config and storage, scraping the daemon every second. p1 sends a known number of UDP datagrams
 * of known size to a sink on inet; Prometheus's HTTP API must report the same IP byte count.
 * `tunnat flows` and `tunnat stats` are run against the daemon while traffic flows, and the
 * mapping log is checked line by line against the flows p1 created (create lines at once, remove
 * lines when the daemon stops). Namespaces are named tnobs-<pid>-* and always removed.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { BIN, Lab, missing, sleep } from "./helpers/lab.js";

const PROM = "/usr/bin/prometheus";
const PROM_ADDR = "127.0.0.1:19090";
/** Datagrams in the bulk flow and their UDP payload size. */
const BULK = 400;
const PAYLOAD = 1000;
const BULK_PORT = 41000;
/** Further flows, one datagram each, from these source ports. */
const EXTRA_PORTS = [41001, 41002, 41003, 41004, 41005];
const EXTRA_PAYLOAD = 64;
const SINK_PORT = 9000;

const reason = missing(["python3", "prometheus"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnobs");
  t.teardown(() => lab.down());
  const mapLog = join(lab.tmp, "mappings.log");
  const dst = lab.inet[0] ?? "";
  const tunnat = (...args: string[]) =>
    lab.exec("nat", [process.execPath, BIN, ...args, "--socket", lab.controlSocket]);

  // UDP sink on inet: counts datagrams and bytes, exits after 60 s at most.
  const sinkScript = `
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${SINK_PORT}))
s.settimeout(1.0)
n = 0
end = time.time() + 60
while time.time() < end:
    try:
        d = s.recv(65535)
        n += 1
        print("got", n, len(d), flush=True)
    except socket.timeout:
        pass
`;
  const sendScript = (sport: number, count: number, size: number, gapMs: number) => `
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${sport}))
for i in range(${count}):
    s.sendto(b"x" * ${size}, ("${dst}", ${SINK_PORT}))
    time.sleep(${gapMs / 1000})
`;

  t.test("observability of a live daemon", async (t) => {
    await lab.startDaemon(["--mapping-log", mapLog]);
    const sink = lab.spawn("inet", ["python3", "-u", "-c", sinkScript]);

    const promDir = join(lab.tmp, "prom");
    const promCfg = join(lab.tmp, "prometheus.yml");
    writeFileSync(
      promCfg,
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: tunnat",
        "    scrape_interval: 1s",
        "    scrape_timeout: 900ms",
        "    static_configs:",
        `      - targets: ["${lab.lab.daemon.metrics}"]`,
        "",
      ].join("\n"),
    );
    const prom = lab.spawn("nat", [
      PROM,
      `--config.file=${promCfg}`,
      `--storage.tsdb.path=${promDir}`,
      `--web.listen-address=${PROM_ADDR}`,
      "--storage.tsdb.retention.time=1h",
    ]);
    let promReady = false;
    for (let i = 0; i < 150 && !promReady; i++) {
      const r = await lab.exec("nat", ["curl", "-sf", "-m", "1", `http://${PROM_ADDR}/-/ready`]);
      promReady = r.code === 0;
      if (!promReady) await sleep(200);
    }
    t.ok(promReady, "Prometheus is ready");
    if (!promReady) {
      t.comment(prom.out().slice(-2000));
      return;
    }
    const query = async (q: string): Promise<number | null> => {
      const r = await lab.exec("nat", [
        "curl",
        "-sf",
        "-m",
        "2",
        "--get",
        "--data-urlencode",
        `query=${q}`,
        `http://${PROM_ADDR}/api/v1/query`,
      ]);
      if (r.code !== 0) return null;
      const j = JSON.parse(r.stdout) as { data?: { result?: { value: [number, string] }[] } };
      const v = j.data?.result?.[0]?.value?.[1];
      return v === undefined ? null : Number(v);
    };

    const ready = await lab.exec("nat", [
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://${lab.lab.daemon.metrics}/readyz`,
    ]);
    t.equal(ready.stdout, "200", "/readyz says forwarding");

    // The batch-duration summary before any traffic (it was always 0 when the batch clock, which
    // stands still during a batch, timed the batches).
    const series = (text: string, name: string): number => {
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
    };
    const before = await lab.metricsText();
    const sumBefore = series(before, "tunnat_datapath_batch_duration_seconds_sum");
    const countBefore = series(before, "tunnat_datapath_batch_duration_seconds_count");
    t.ok(Number.isFinite(sumBefore) && Number.isFinite(countBefore), "the summary is exported");

    // The five one-datagram flows first, then the bulk flow in the background (~4 s).
    for (const p of EXTRA_PORTS)
      await lab.sh("p1", ["python3", "-c", sendScript(p, 1, EXTRA_PAYLOAD, 0)]);
    const bulk = lab.spawn("p1", ["python3", "-c", sendScript(BULK_PORT, BULK, PAYLOAD, 10)]);
    await sleep(1000);

    // While the bulk flow runs: flows and stats from the control socket.
    const flowsText = await tunnat("flows", "--host", lab.p1);
    t.equal(flowsText.code, 0, "tunnat flows exits 0");
    t.match(
      flowsText.stdout,
      new RegExp(
        `udp\\s+17\\s+\\d+\\s+src=${lab.p1.replace(/\./g, "\\.")} dst=${dst.replace(/\./g, "\\.")} sport=${BULK_PORT} dport=${SINK_PORT}`,
      ),
      "the bulk flow is listed like conntrack -L",
    );
    const flowsJson = await tunnat("flows", "--json", "--proto", "udp", "--host", lab.p1);
    const flows = flowsJson.stdout
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    t.same(
      flows.map((f) => f.insidePort).sort(),
      [BULK_PORT, ...EXTRA_PORTS].sort(),
      "one flow per source port",
    );
    for (const f of flows) t.equal(f.outsideAddr, lab.natAddress);
    const limited = await tunnat("flows", "--json", "--limit", "2");
    t.equal(limited.stdout.trim().split("\n").length, 2, "--limit");
    const statsJson = await tunnat("stats", "--json");
    t.equal(statsJson.code, 0, "tunnat stats exits 0");
    const stats = JSON.parse(statsJson.stdout) as {
      nat: Record<string, number>;
      table: Record<string, number>;
    };
    t.ok((stats.nat.bytesOutToDestination ?? 0) > 0, "bytes out counted while traffic flows");
    t.ok((stats.table.flows ?? 0) >= 6);
    const statsText = await tunnat("stats");
    t.match(statsText.stdout, /bytesOutToDestination\s+\d+/);

    const bulkCode = await bulk.exited;
    t.equal(bulkCode, 0, "the sender finished");
    // IP bytes of what p1 sent: 20 (IP) + 8 (UDP) + payload per datagram.
    const expected = BULK * (28 + PAYLOAD) + EXTRA_PORTS.length * (28 + EXTRA_PAYLOAD);
    const packets = BULK + EXTRA_PORTS.length;
    // Wait for a scrape taken after the last datagram: a scrape from while the sender ran can be
    // within a percent of the total and still short (two datagrams, once in CI).
    let seen: number | null = null;
    for (let i = 0; i < 40; i++) {
      seen = await query("tunnat_out_to_destination_bytes_total");
      if (seen === expected) break;
      await sleep(500);
    }
    t.ok(
      seen !== null && Math.abs(seen - expected) <= expected * 0.01,
      `Prometheus reports ${seen} bytes out to destination, sent ${expected}`,
    );
    t.equal(seen, expected, "exactly, in fact");
    t.equal(await query("tunnat_out_to_destination_packets_total"), packets);
    t.equal(await query("tunnat_in_from_source_bytes_total"), expected);
    t.equal(
      await query(`tunnat_host_bytes_total{host="${lab.p1}",direction="out"}`),
      expected,
      "the per-host counter of p1 agrees",
    );
    t.equal(await query('tunnat_flows{protocol="udp"}'), 6);
    t.equal(await query("up"), 1);
    const got = (sink.out().match(/^got /gm) ?? []).length;
    t.equal(got, packets, "the sink on inet received every datagram");
    const after = await lab.metricsText();
    const countAfter = series(after, "tunnat_datapath_batch_duration_seconds_count");
    const sumAfter = series(after, "tunnat_datapath_batch_duration_seconds_sum");
    t.ok(countAfter - countBefore >= 1, `batches timed: ${countBefore} -> ${countAfter}`);
    t.ok(sumAfter > sumBefore, `batch duration moves under traffic: ${sumBefore} -> ${sumAfter} s`);

    // Stop the daemon: every live mapping gets its remove line.
    t.equal(await lab.stopDaemon(), 0, "the daemon exits 0");
    const lines = (await lab.sh("nat", ["cat", mapLog]))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const mine = (ev: string) =>
      lines.filter(
        (l) => l.event === ev && String(l.inside).startsWith(`${lab.p1}:`) && l.proto === "udp",
      );
    const creates = mine("create");
    t.same(
      creates.map((l) => l.inside),
      [...EXTRA_PORTS, BULK_PORT].map((p) => `${lab.p1}:${p}`),
      "one create line per flow, in creation order",
    );
    for (const l of creates) {
      t.match(l.outside, new RegExp(`^${lab.natAddress.replace(/\./g, "\\.")}:\\d+$`));
      t.notOk("destination" in l, "no destination by default (RFC 6888 REQ-12)");
      t.ok(!Number.isNaN(Date.parse(String(l.time))));
    }
    const removes = mine("remove");
    t.equal(removes.length, 6, "one remove line per mapping at shutdown");
    const bulkRemove = removes.find((l) => l.inside === `${lab.p1}:${BULK_PORT}`);
    t.match(bulkRemove, { reason: "shutdown", bytesOut: BULK * (28 + PAYLOAD), bytesIn: 0 });
    for (const l of removes)
      t.equal(
        l.outside,
        creates.find((c) => c.inside === l.inside)?.outside,
        `${l.inside} removed with the outside address:port it was created with`,
      );
    await prom.stop(2000);
    await sink.stop(500);
  });
}
