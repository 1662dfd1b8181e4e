/**
 * `tunnat check`: every prerequisite of `tunnat run`, reported without changing anything
 * (read-only `ip` queries, /proc reads). The daemon refuses to start on the same conditions.
 */
import { accessSync, constants as fsConstants, readFileSync, statSync } from "node:fs";
import { errorMessage } from "../base/errors.js";
import { cidrContains, formatCidr, formatIpv4 } from "../wire/addr.js";
import { type LoadInput, loadConfig, resolveSettings, type TunnatConfig } from "./config.js";
import { guardTableName } from "./guard.js";
import { socketAnswers } from "./owner.js";
import { execCommand, hostRunner, type Runner } from "./runner.js";

/** CAP_NET_ADMIN is bit 12 of the effective capability set (include/uapi/linux/capability.h). */
const CAP_NET_ADMIN = 12;

export function hasCapNetAdmin(status = readFileSync("/proc/self/status", "utf8")): boolean {
  const m = /^CapEff:\s*([0-9a-fA-F]+)$/m.exec(status);
  if (!m) return false;
  return ((BigInt(`0x${m[1]}`) >> BigInt(CAP_NET_ADMIN)) & 1n) === 1n;
}

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

export interface CheckOptions {
  input: LoadInput;
  runner?: Runner;
  /** /proc/self/status text (tests). */
  procStatus?: string;
  /** Path of the TUN clone device (tests). */
  tunPath?: string;
  /** Whether a daemon of this config runs (tests); default: its control socket answers. */
  running?: boolean;
}

async function linkExists(r: Runner, name: string): Promise<string | null> {
  try {
    const info = JSON.parse(await r.ip(["-j", "link", "show", "dev", name])) as {
      mtu?: number;
      operstate?: string;
    }[];
    const l = info[0];
    return l ? `mtu ${l.mtu}, ${l.operstate ?? "?"}` : null;
  } catch {
    return null;
  }
}

export async function runChecks(opts: CheckOptions): Promise<CheckResult[]> {
  const r = opts.runner ?? hostRunner();
  const out: CheckResult[] = [];
  const add = (name: string, ok: boolean, detail: string) => out.push({ name, ok, detail });

  let cfg: TunnatConfig | null = null;
  try {
    cfg = loadConfig(opts.input);
    add("config", true, "valid");
  } catch (e) {
    add("config", false, errorMessage(e));
  }

  try {
    const v = (await execCommand("ip", ["-V"])).trim();
    add("ip tool", true, v);
  } catch (e) {
    add("ip tool", false, `iproute2 "ip" not usable: ${errorMessage(e)}; install iproute2`);
  }

  try {
    const v = (await r.nft(["--version"])).trim();
    add("nft tool", true, v);
  } catch (e) {
    add(
      "nft tool",
      manageRoutesSetting(opts.input) === false,
      `nft not usable: ${errorMessage(e)}; the guard (--manage-routes) needs it: install nftables ("apt-get install nftables")`,
    );
  }

  const tunPath = opts.tunPath ?? "/dev/net/tun";
  try {
    if (!statSync(tunPath).isCharacterDevice()) throw new Error("not a character device");
    accessSync(tunPath, fsConstants.R_OK | fsConstants.W_OK);
    add("tun device", true, `${tunPath} is a readable and writable character device`);
  } catch (e) {
    add(
      "tun device",
      false,
      `${tunPath}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}; run "modprobe tun" or pass --device /dev/net/tun to the container`,
    );
  }

  let status = opts.procStatus;
  if (status === undefined)
    try {
      status = readFileSync("/proc/self/status", "utf8");
    } catch {
      status = "";
    }
  const cap = hasCapNetAdmin(status);
  add(
    "CAP_NET_ADMIN",
    cap,
    cap ? "present in CapEff" : "missing from CapEff: run as root or grant CAP_NET_ADMIN",
  );

  try {
    const fwd = await r.readSysctl("net/ipv4/ip_forward");
    if (fwd === "1") add("ip_forward", true, "net.ipv4.ip_forward = 1");
    else if (cfg?.control.setIpForward)
      add("ip_forward", true, `net.ipv4.ip_forward = ${fwd}; --set-ip-forward will set it to 1`);
    else
      add(
        "ip_forward",
        false,
        `net.ipv4.ip_forward = ${fwd}: run "sysctl -w net.ipv4.ip_forward=1" or use --set-ip-forward`,
      );
  } catch (e) {
    add("ip_forward", false, `cannot read net.ipv4.ip_forward: ${errorMessage(e)}`);
  }

  // Interfaces and overlap come from the raw settings so they are reported even when some other
  // field makes the whole config invalid.
  let raw: ReturnType<typeof resolveSettings> | null = null;
  try {
    raw = resolveSettings(opts.input);
  } catch {
    raw = null;
  }
  const ifaces: [string, string | undefined][] = [
    ["inside interface", raw?.values.insideInterface],
    ["outside interface", raw?.values.outsideInterface],
  ];
  for (const [label, name] of ifaces) {
    if (name === undefined) {
      add(label, raw?.values.manageRoutes === false, "not set");
      continue;
    }
    const info = await linkExists(r, name);
    add(label, info !== null, info ? `${name}: ${info}` : `${name} does not exist (see "ip link")`);
  }
  // On a running gateway the TUN is the daemon's own: check never opens or creates one, and a
  // daemon of this config (its control socket answers) owns the name.
  const socket = raw?.values.controlSocket ?? "/run/tunnat/tunnat.sock";
  const running = opts.running ?? (await socketAnswers(socket));
  if (raw?.values.tun) {
    const info = await linkExists(r, raw.values.tun);
    add(
      "tun name",
      info === null || running,
      info === null
        ? `${raw.values.tun} is free`
        : running
          ? `${raw.values.tun} is in use by the tunnat daemon answering on ${socket} (${info})`
          : `${raw.values.tun} already exists (${info}): another tunnat running? choose --tun`,
    );
  }

  try {
    const all = await r.readSysctl("net/ipv4/conf/all/rp_filter");
    const outIf = raw?.values.outsideInterface;
    const outVal = outIf
      ? await r.readSysctl(`net/ipv4/conf/${outIf}/rp_filter`).catch(() => "?")
      : "?";
    // The kernel uses max(all, dev); tunnat sets the TUN to 2 (loose), which is enough whatever
    // `all` says, so this is reported, not enforced.
    add(
      "rp_filter",
      true,
      `all=${all}${outIf ? `, ${outIf}=${outVal}` : ""}; tunnat sets its TUN to 2 (loose)`,
    );
  } catch (e) {
    add("rp_filter", false, `cannot read rp_filter: ${errorMessage(e)}`);
  }

  // The guard of a stopped daemon keeps the inside closed: say so (informational).
  if (raw?.values.manageRoutes !== false && raw?.values.routeTable !== undefined) {
    const name = guardTableName(raw.values.routeTable);
    const present = await r.nft(["list", "table", "ip", name]).then(
      () => true,
      () => false,
    );
    add(
      "guard",
      true,
      present
        ? `nft table ip ${name} is installed: while no tunnat runs, inside traffic is held closed ("tunnat down" opens it)`
        : `not installed yet (tunnat run installs nft table ip ${name})`,
    );
  }

  const inside = raw?.values.inside ?? [];
  const nats = raw?.values.natAddress ?? [];
  if (inside.length > 0 && nats.length > 0) {
    const clashes: string[] = [];
    for (const a of nats)
      for (const p of inside)
        if (cidrContains(p, a)) clashes.push(`${formatIpv4(a)} in ${formatCidr(p)}`);
    add(
      "address overlap",
      clashes.length === 0,
      clashes.length === 0
        ? "no NAT address lies inside an inside prefix"
        : `NAT address inside an inside prefix (RFC 4787 REQ-7): ${clashes.join(", ")}`,
    );
    try {
      const local = new Map<string, string>();
      const addrs = JSON.parse(await r.ip(["-j", "-4", "addr", "show"])) as {
        ifname?: string;
        addr_info?: { local?: string }[];
      }[];
      for (const l of addrs)
        for (const x of l.addr_info ?? []) if (x.local) local.set(x.local, l.ifname ?? "");
      const owned = nats.map(formatIpv4).filter((a) => local.has(a));
      // One NAT address that is the outside interface's own selects shared-address mode.
      const shared =
        nats.length === 1 &&
        owned.length === 1 &&
        local.get(owned[0] ?? "") === raw?.values.outsideInterface;
      add(
        shared ? "shared NAT address" : "dedicated NAT address",
        owned.length === 0 || shared,
        owned.length === 0
          ? "the host owns none of the NAT addresses"
          : shared
            ? `${owned[0]} is the outside interface's own address: shared-address mode (NAT ports outside net.ipv4.ip_local_port_range)`
            : `the host owns ${owned.join(", ")}; use an address it does not own, or exactly one NAT address that is the outside interface's own (shared-address mode)`,
      );
    } catch (e) {
      add("dedicated NAT address", false, `cannot list addresses: ${errorMessage(e)}`);
    }
  } else {
    add("address overlap", false, "needs --inside and --nat-address");
  }
  return out;
}

/** The manageRoutes setting of the input, or undefined when it cannot be resolved. */
function manageRoutesSetting(input: LoadInput): boolean | undefined {
  try {
    return resolveSettings(input).values.manageRoutes;
  } catch {
    return undefined;
  }
}

export function formatChecks(results: CheckResult[]): string {
  const w = Math.max(...results.map((r) => r.name.length));
  const lines = results.map((r) => `${r.ok ? "ok  " : "FAIL"}  ${r.name.padEnd(w)}  ${r.detail}`);
  const failed = results.filter((r) => !r.ok).length;
  lines.push(failed === 0 ? "all checks passed" : `${failed} check(s) failed`);
  return `${lines.join("\n")}\n`;
}
