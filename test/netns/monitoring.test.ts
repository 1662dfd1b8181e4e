/**
 * monitoring/ against a real Prometheus in the lab (root; skipped otherwise):
 *
 *   p1 (10.0.1.2) -- br-in -- [nat: tunnat0, tunnat run, prometheus] -- out0 -- inet (.10)
 *
 * Debian's /usr/bin/prometheus runs in the nat namespace with a temporary config (scraping the
 * daemon every second as job "tunnat", loading monitoring/alerts.yml), storage in the lab's
 * temporary folder and a 1 h retention; the lab's teardown stops it. p1 sends UDP to a sink on
 * inet and pings it while inet sends unsolicited datagrams to the NAT address (internet noise).
 * Then every query of monitoring/grafana-dashboard.json (its $job, $instance and
 * $__rate_interval substituted) must return data from Prometheus' HTTP API, every alert rule's
 * expression must evaluate without error, Prometheus must report every rule healthy, and the
 * drop alert must not be pending on noise alone. Namespaces are named tnmon-<pid>-*.
 */
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import { packageRoot } from "../../src/io/package-root.js";
import { Lab, missing, sleep } from "./helpers/lab.js";

const ROOT = packageRoot() ?? process.cwd();
const PROM = "/usr/bin/prometheus";
const PROM_ADDR = "127.0.0.1:19091";
const SINK_PORT = 9000;
/** How long traffic runs, so that rate() over 15 s windows has samples on both sides. */
const TRAFFIC_SECONDS = 25;

const dashboard = JSON.parse(
  readFileSync(join(ROOT, "monitoring", "grafana-dashboard.json"), "utf8"),
) as unknown;
const alerts = parseYaml(readFileSync(join(ROOT, "monitoring", "alerts.yml"), "utf8")) as {
  groups: { rules: { alert: string; expr: string }[] }[];
};

/** Every panel query of the dashboard, with its panel's title. */
function panelQueries(): { title: string; expr: string }[] {
  const out: { title: string; expr: string }[] = [];
  const walk = (o: unknown, title: string): void => {
    if (Array.isArray(o)) for (const x of o) walk(x, title);
    else if (o && typeof o === "object") {
      const rec = o as Record<string, unknown>;
      const here = typeof rec.title === "string" ? rec.title : title;
      if (typeof rec.expr === "string") out.push({ title: here, expr: rec.expr });
      for (const [k, v] of Object.entries(rec)) if (k !== "templating") walk(v, here);
    }
  };
  walk((dashboard as { panels: unknown }).panels, "");
  return out;
}

/** Grafana's variables as the dashboard is opened with "All" gateways of job tunnat. */
function substitute(expr: string): string {
  return expr
    .replaceAll("$__rate_interval", "15s")
    .replaceAll('job=~"$job"', 'job=~"tunnat"')
    .replaceAll('instance=~"$instance"', 'instance=~".+"');
}

const reason = missing(["python3", "prometheus", "curl"]);
if (reason) t.plan(0, reason);
else {
  const lab = await Lab.up("tnmon");
  t.teardown(() => lab.down());
  const dst = lab.inet[0] ?? "";

  t.test("every dashboard panel and alert rule works against a real Prometheus", async (t) => {
    await lab.startDaemon(["--mapping-log", join(lab.tmp, "mappings.log")]);
    const rules = join(lab.tmp, "alerts.yml");
    copyFileSync(join(ROOT, "monitoring", "alerts.yml"), rules);
    const promCfg = join(lab.tmp, "prometheus.yml");
    writeFileSync(
      promCfg,
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "rule_files:",
        `  - ${rules}`,
        "scrape_configs:",
        "  - job_name: tunnat",
        "    scrape_timeout: 900ms",
        "    static_configs:",
        `      - targets: ["${lab.lab.daemon.metrics}"]`,
        "",
      ].join("\n"),
    );
    const prom = lab.spawn("nat", [
      PROM,
      `--config.file=${promCfg}`,
      `--storage.tsdb.path=${join(lab.tmp, "prom")}`,
      `--web.listen-address=${PROM_ADDR}`,
      "--storage.tsdb.retention.time=1h",
    ]);
    const api = async (path: string, params: Record<string, string> = {}) => {
      const args = ["curl", "-s", "-m", "5", "--get"];
      for (const [k, v] of Object.entries(params)) args.push("--data-urlencode", `${k}=${v}`);
      const r = await lab.exec("nat", [...args, `http://${PROM_ADDR}${path}`]);
      try {
        return JSON.parse(r.stdout) as {
          status: string;
          error?: string;
          data?: unknown;
        };
      } catch {
        return { status: "unreadable", error: `${r.stdout}${r.stderr}`.slice(0, 300) };
      }
    };
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

    // Traffic for TRAFFIC_SECONDS: UDP and pings out from p1, unsolicited UDP in from inet.
    const sink = lab.spawn("inet", [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("0.0.0.0",${SINK_PORT}));s.settimeout(1)
end=time.time()+${TRAFFIC_SECONDS + 10}
while time.time()<end:
    try: s.recv(65535)
    except socket.timeout: pass`,
    ]);
    const sender = lab.spawn("p1", [
      "python3",
      "-c",
      `import socket,time
end=time.time()+${TRAFFIC_SECONDS}
i=0
while time.time()<end:
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("0.0.0.0",42000+i%50))
    s.sendto(b"x"*500,("${dst}",${SINK_PORT}));s.close();i+=1;time.sleep(0.02)`,
    ]);
    const noise = lab.spawn("inet", [
      "python3",
      "-c",
      `import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
end=time.time()+${TRAFFIC_SECONDS}
p=1
while time.time()<end:
    s.sendto(b"scan",("${lab.natAddress}",20000+p%4000));p+=1;time.sleep(0.05)`,
    ]);
    const ping = lab.spawn("p1", ["ping", "-q", "-i", "0.2", "-w", String(TRAFFIC_SECONDS), dst]);
    t.equal(await sender.exited, 0, "the UDP sender ran");
    await noise.exited;
    await ping.exited;

    // The template variables' queries.
    const jobs = await api("/api/v1/label/job/values", { "match[]": "tunnat_ready" });
    t.same(jobs.data, ["tunnat"], "label_values(tunnat_ready, job) lists the job");
    const instances = await api("/api/v1/label/instance/values", {
      "match[]": 'tunnat_ready{job=~"tunnat"}',
    });
    t.same(instances.data, [lab.lab.daemon.metrics], "and the instance");

    const queries = panelQueries();
    t.ok(queries.length >= 40, `${queries.length} panel queries`);
    for (const { title, expr } of queries) {
      const q = substitute(expr);
      const r = await api("/api/v1/query", { query: q });
      const result = (r.data as { result?: unknown[] } | undefined)?.result ?? [];
      t.ok(
        r.status === "success" && result.length > 0,
        `panel "${title}": ${q} returns data${r.error ? ` (${r.error})` : ""}`,
      );
    }
    // Evidence, not just presence: the traffic and the noise are where they belong.
    const value = async (q: string) => {
      const r = await api("/api/v1/query", { query: q });
      const v = (r.data as { result?: { value: [number, string] }[] }).result?.[0]?.value?.[1];
      return v === undefined ? Number.NaN : Number(v);
    };
    t.ok((await value("tunnat_out_to_destination_packets_total")) > 500, "UDP crossed");
    const refused = await value('tunnat_inbound_refused_packets_total{reason="unsolicited"}');
    t.ok(refused > 100, `the noise is refused inbound (${refused})`);
    t.equal(
      await value("sum(tunnat_dropped_packets_total)"),
      0,
      "and is no drop: a CloudWatch-style > 0 alarm stays quiet",
    );

    const rulesList = alerts.groups.flatMap((g) => g.rules);
    for (const r of rulesList) {
      const res = await api("/api/v1/query", { query: r.expr });
      t.equal(
        res.status,
        "success",
        `alert ${r.alert}: its expression evaluates${res.error ? ` (${res.error})` : ""}`,
      );
    }
    const loaded = await api("/api/v1/rules");
    const health = (
      (
        loaded.data as {
          groups: { rules: { name: string; health: string; lastError?: string }[] }[];
        }
      ).groups ?? []
    ).flatMap((g) => g.rules);
    t.equal(health.length, rulesList.length, "Prometheus loaded every rule");
    for (const h of health)
      t.equal(h.health, "ok", `Prometheus evaluates ${h.name} without error ${h.lastError ?? ""}`);
    const active = await api("/api/v1/alerts");
    const names = (
      (active.data as { alerts: { labels: { alertname: string } }[] }).alerts ?? []
    ).map((a) => a.labels.alertname);
    t.notOk(names.includes("TunnatDropsRising"), "internet noise does not raise the drop alert");
    t.notOk(names.includes("TunnatDown") || names.includes("TunnatAbsent"), "the target is up");
    await prom.stop(2000);
    await sink.stop(500);
  });
}
