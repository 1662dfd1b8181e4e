/**
 * docker-compose.yml describes the namespace lab with containers: same prefixes, same addresses,
 * same NAT address (lab/lab.json is the lab's single source). Also checks what the nat container
 * needs to run tunnat at all. `docker-compose config` itself runs in test/deploy/compose.sh.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { parse } from "yaml";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

interface Service {
  cap_add?: string[];
  devices?: string[];
  sysctls?: Record<string, string>;
  environment?: Record<string, string>;
  command?: string[] | string;
  networks?: Record<string, { ipv4_address?: string }>;
}
interface Compose {
  services: Record<string, Service>;
  networks: Record<string, { ipam?: { config?: { subnet?: string; gateway?: string }[] } }>;
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
