/**
 * docker-compose.yml describes the namespace lab with containers: same prefixes, same addresses,
 * same NAT address (lab/lab.json is the lab's single source). Also checks what the nat container
 * needs to run tunnat at all, that the private network is no Docker bridge (whose isolation rule
 * drops the NAT traffic, issue 9), and the monitoring profile. `docker-compose config` runs in
 * test/artefacts/compose.sh; test/artefacts/compose-run.sh runs the lab on a real Docker Engine.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { parse } from "yaml";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

interface Service {
  image?: string;
  profiles?: string[];
  network_mode?: string;
  volumes?: string[];
  cap_add?: string[];
  devices?: string[];
  sysctls?: Record<string, string>;
  environment?: Record<string, string>;
  command?: string[] | string;
  networks?: Record<string, { ipv4_address?: string }>;
}
interface Compose {
  services: Record<string, Service>;
  networks: Record<
    string,
    {
      driver?: string;
      internal?: boolean;
      driver_opts?: Record<string, string>;
      ipam?: { config?: { subnet?: string; gateway?: string }[] };
    }
  >;
}
interface LabJson {
  inside: { prefix: string; gateway: string; hosts: Record<string, string> };
  outside: { prefix: string; natInterfaceAddress: string; natAddress: string; inet: string[] };
}

// merge: docker-compose.yml shares settings through YAML merge keys ("<<: *tunnat").
const compose = parse(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"), {
  merge: true,
}) as Compose;
const lab = JSON.parse(readFileSync(join(ROOT, "lab", "lab.json"), "utf8")) as LabJson;

function subnetOf(network: string): string | undefined {
  return compose.networks[network]?.ipam?.config?.[0]?.subnet;
}
function addressOf(service: string, network: string): string | undefined {
  return compose.services[service]?.networks?.[network]?.ipv4_address;
}

t.test("the compose networks have the namespace lab's prefixes", async (t) => {
  t.equal(subnetOf("private"), lab.inside.prefix, "private network = the lab's inside prefix");
  t.equal(subnetOf("internet"), lab.outside.prefix, "internet network = the lab's outside prefix");
});

t.test("every lab host has its lab address in compose", async (t) => {
  t.equal(addressOf("nat", "private"), lab.inside.gateway, "nat's inside address");
  t.equal(addressOf("nat", "internet"), lab.outside.natInterfaceAddress, "nat's outside address");
  for (const [name, addr] of Object.entries(lab.inside.hosts))
    t.equal(addressOf(name, "private"), addr, `${name} is ${addr}`);
  const inet = [addressOf("internet", "internet"), addressOf("internet2", "internet")];
  t.same(inet, lab.outside.inet, "the internet servers have the lab's internet addresses");
});

t.test(
  "the nat service translates to the lab's NAT address for the lab's inside prefix",
  async (t) => {
    const env = compose.services.nat?.environment ?? {};
    t.equal(env.TUNNAT_NAT_ADDRESS, lab.outside.natAddress);
    t.equal(env.TUNNAT_INSIDE, lab.inside.prefix);
    t.equal(env.TUNNAT_INSIDE_ADDRESS, lab.inside.gateway);
    t.equal(env.TUNNAT_OUTSIDE_ADDRESS, lab.outside.natInterfaceAddress);
    const used = Object.values(compose.services).flatMap((s) =>
      Object.values(s.networks ?? {}).map((n) => n.ipv4_address),
    );
    t.notOk(used.includes(lab.outside.natAddress), "no container owns the NAT address (proxy ARP)");
    const gateways = Object.values(compose.networks).map((n) => n.ipam?.config?.[0]?.gateway);
    t.notOk(gateways.includes(lab.outside.natAddress), "nor does Docker's bridge");
    t.notOk(gateways.includes(lab.inside.gateway), "and the bridge leaves the nat's address free");
  },
);

t.test("the nat container has what tunnat needs: NET_ADMIN, the TUN, forwarding", async (t) => {
  const nat = compose.services.nat ?? {};
  t.ok(nat.cap_add?.includes("NET_ADMIN"));
  t.ok(nat.devices?.some((d) => d.startsWith("/dev/net/tun")));
  t.equal(String(nat.sysctls?.["net.ipv4.ip_forward"]), "1");
  t.equal(String(nat.sysctls?.["net.ipv4.conf.default.rp_filter"]), "2", "a new TUN is loose");
});

t.test("the private hosts route their default via the nat's inside address", async (t) => {
  for (const name of Object.keys(lab.inside.hosts)) {
    const cmd = compose.services[name]?.command;
    const text = Array.isArray(cmd) ? cmd.join(" ") : (cmd ?? "");
    t.match(text, `default via ${lab.inside.gateway}`, `${name} routes via the nat`);
    t.ok(compose.services[name]?.cap_add?.includes("NET_ADMIN"), `${name} may set its route`);
  }
});

t.test("the private network is a macvlan switch with no way out but the nat", async (t) => {
  const priv = compose.networks.private ?? {};
  // An internal Docker *bridge* passes no NAT traffic where bridge-nf-call-iptables=1
  // (DOCKER-ISOLATION-STAGE-1 drops "-i br-<private> ! -d <subnet>"); a non-internal one gives
  // the private hosts Docker's gateway and masquerading as a second way out.
  t.equal(priv.driver, "macvlan", "not a Docker bridge");
  t.equal(priv.internal, true, "internal: Docker gives the private hosts no default route");
  t.equal(
    priv.driver_opts?.parent,
    // biome-ignore lint/suspicious/noTemplateCurlyInString: compose's interpolation, not JS's
    "${TUNNAT_PRIVATE_PARENT:-}",
    "no parent by default: Docker makes a dummy one, connected to nothing",
  );
  for (const [name, s] of Object.entries(compose.services)) {
    if (name === "nat" || !s.networks?.private) continue;
    t.same(Object.keys(s.networks), ["private"], `${name} is on the private network only`);
  }
});

t.test("the monitoring profile: Prometheus on the nat, Grafana provisioned", async (t) => {
  const prom = compose.services.prometheus ?? {};
  const grafana = compose.services.grafana ?? {};
  t.same(prom.profiles, ["monitoring"], "prometheus only with --profile monitoring");
  t.same(grafana.profiles, ["monitoring"], "grafana only with --profile monitoring");
  t.match(prom.image ?? "", /^prom\/prometheus:v\d/, "a pinned Prometheus image");
  t.match(grafana.image ?? "", /^grafana\/grafana(-oss)?:\d/, "a pinned Grafana image");
  // monitoring/prometheus.yml scrapes 127.0.0.1:9469: Prometheus shares the nat's netns.
  t.equal(prom.network_mode, "service:nat");
  const prometheusYml = readFileSync(join(ROOT, "monitoring", "prometheus.yml"), "utf8");
  t.match(prometheusYml, "127.0.0.1:9469", "the example config scrapes tunnat on loopback");
  const mounts = [...(prom.volumes ?? []), ...(grafana.volumes ?? [])];
  for (const m of mounts) {
    const src = m.split(":")[0] ?? "";
    t.ok(existsSync(join(ROOT, src)), `${src} exists`);
  }
  t.ok(
    mounts.some((m) => m.startsWith("./monitoring/prometheus.yml:")),
    "uses monitoring/prometheus.yml",
  );
  t.ok(
    mounts.some((m) => m.startsWith("./monitoring/grafana-dashboard.json:")),
    "provisions monitoring/grafana-dashboard.json",
  );
  const ds = parse(readFileSync(join(ROOT, "monitoring", "grafana", "datasources.yml"), "utf8"));
  t.equal(ds.datasources?.[0]?.url, "http://nat:9090", "Grafana reaches Prometheus in the nat");
  const addr = grafana.networks?.internet?.ipv4_address;
  t.ok(addr, "grafana has a fixed address (a dynamic one would be the NAT address)");
});
