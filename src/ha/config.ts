/**
 * The HA settings file (`tunnat run --ha FILE`), JSON, checked field by field: an error names the
 * file, the field and the bad value (TUNNAT_ERR_CONFIG, exit 2), and the shared key must be
 * there, long enough and readable by its owner only, or the daemon refuses to start.
 *
 *   {
 *     "arbiter": "keepalived",            who decides mastership: "keepalived" (VRRP, via
 *                                         `tunnat ha role`) or "heartbeat" (the sync link's
 *                                         heartbeats, with priority and fencing; EC2 only:
 *                                         refused without "ec2", whose routes fence it)
 *     "listen": "ADDR:PORT",              this gateway's sync address (UDP)
 *     "peer": "ADDR:PORT",                the other gateway's
 *     "keyFile": "/etc/tunnat/ha.key",    the shared key: at least 32 bytes, mode 0600 or 0400
 *     "heartbeatMs": 200, "misses": 5,    a peer silent for misses x heartbeatMs is down
 *     "priority": 100,                    0..255; the heartbeat arbiter prefers the higher
 *     "windowMessages": 512, "resendMs": 250, "maxBytesPerSec": 20000000,
 *     "ringEvents": 65536, "refreshSec": 10,
 *     "keepalivedFifo": "/run/tunnat/keepalived.fifo",   keepalived's vrrp_notify_fifo, read
 *                                         for the role (else its notify script runs `tunnat ha
 *                                         role`); "keepalivedInstance": "inside" filters lines
 *     "garp": true,                       L2: the NAT addresses' proxy ARP follows the role and
 *                                         the new active announces them with gratuitous ARP
 *     "ec2": { "region": "eu-west-1", "networkInterfaceId": "eni-…", "routeTables": ["rtb-…"],
 *              "destination": "0.0.0.0/0", "allocationId": "eipalloc-…" | "secondaryPrivateIp":
 *              "…", "privateIpAddress": "…", "checkMs": 5000 }
 *   }
 */
import { readFileSync, statSync } from "node:fs";
import { ErrorCode, errorMessage, TunnatError } from "../base/errors.js";
import { parseIpv4 } from "../wire/addr.js";
import { MIN_KEY_BYTES } from "./protocol.js";
import { DEFAULT_SYNC, type SyncOptions } from "./sync.js";

type Arbiter = "keepalived" | "heartbeat";

export interface Ec2Settings {
  region: string | undefined;
  networkInterfaceId: string;
  routeTables: string[];
  destination: string;
  allocationId: string | undefined;
  privateIpAddress: string | undefined;
  secondaryPrivateIp: string | undefined;
  /** Milliseconds between two checks that the routes still point here (fencing). */
  checkMs: number;
}

export interface HaSettings {
  file: string;
  arbiter: Arbiter;
  listen: { host: string; port: number };
  peer: { host: string; port: number };
  sync: SyncOptions;
  ringEvents: number;
  garp: boolean;
  /** keepalived's vrrp_notify_fifo, read for the role (keepalived.ts); undefined = none. */
  keepalivedFifo: string | undefined;
  /** Only this VRRP instance's lines count; undefined = any. */
  keepalivedInstance: string | undefined;
  ec2: Ec2Settings | undefined;
}

function bad(file: string, field: string, value: unknown, expect: string): TunnatError {
  return new TunnatError(
    ErrorCode.Config,
    `HA file ${file}: "${field}" is ${JSON.stringify(value)}; expected ${expect}`,
  );
}

function hostPort(file: string, field: string, v: unknown): { host: string; port: number } {
  const m = typeof v === "string" ? /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(v) : null;
  const port = m ? Number(m[2]) : -1;
  if (!m || parseIpv4(m[1] ?? "") < 0 || port < 1 || port > 65535)
    throw bad(file, field, v, "an IPv4 ADDRESS:PORT");
  return { host: m[1] ?? "", port };
}

function int(
  file: string,
  o: Record<string, unknown>,
  field: string,
  def: number,
  lo: number,
  hi: number,
): number {
  const v = o[field];
  if (v === undefined) return def;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
    throw bad(file, field, v, `an integer ${lo}..${hi}`);
  return v;
}

function str(file: string, o: Record<string, unknown>, field: string, re: RegExp): string {
  const v = o[field];
  if (typeof v !== "string" || !re.test(v)) throw bad(file, field, v, `a string matching ${re}`);
  return v;
}

/** Read the shared key; refuses a missing, short, or group/other-readable file. */
function readKey(file: string, keyFile: unknown): Buffer {
  if (typeof keyFile !== "string" || !keyFile.startsWith("/"))
    throw bad(file, "keyFile", keyFile, "an absolute path");
  let key: Buffer;
  try {
    const st = statSync(keyFile);
    if ((st.mode & 0o077) !== 0)
      throw new TunnatError(
        ErrorCode.Config,
        `HA file ${file}: the key file ${keyFile} is readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    key = readFileSync(keyFile);
  } catch (e) {
    if (e instanceof TunnatError) throw e;
    throw new TunnatError(
      ErrorCode.Config,
      `HA file ${file}: cannot read the key file ${keyFile}: ${errorMessage(e)}`,
    );
  }
  // A key written with echo ends with a newline that the other side may not have.
  const text = key.toString("latin1").replace(/\s+$/, "");
  const k = Buffer.from(text, "latin1");
  if (k.length < MIN_KEY_BYTES)
    throw new TunnatError(
      ErrorCode.Config,
      `HA file ${file}: the key in ${keyFile} has ${k.length} bytes; at least ${MIN_KEY_BYTES} are needed (e.g. head -c 48 /dev/urandom | base64 > ${keyFile})`,
    );
  return k;
}

export function parseHaSettings(file: string, o: unknown): HaSettings {
  if (typeof o !== "object" || o === null || Array.isArray(o))
    throw new TunnatError(ErrorCode.ConfigFile, `HA file ${file}: not a JSON object`);
  const r = o as Record<string, unknown>;
  const known = new Set([
    "arbiter",
    "listen",
    "peer",
    "keyFile",
    "heartbeatMs",
    "misses",
    "priority",
    "windowMessages",
    "resendMs",
    "maxBytesPerSec",
    "ringEvents",
    "refreshSec",
    "tickMs",
    "garp",
    "keepalivedFifo",
    "keepalivedInstance",
    "ec2",
  ]);
  for (const k of Object.keys(r)) if (!known.has(k)) throw bad(file, k, r[k], "no such field");
  const arbiter = r.arbiter ?? "keepalived";
  if (arbiter !== "keepalived" && arbiter !== "heartbeat")
    throw bad(file, "arbiter", arbiter, '"keepalived" or "heartbeat"');
  const listen = hostPort(file, "listen", r.listen);
  const peer = hostPort(file, "peer", r.peer);
  const key = readKey(file, r.keyFile);
  const d = DEFAULT_SYNC;
  const sync: SyncOptions = {
    key,
    heartbeatMs: int(file, r, "heartbeatMs", d.heartbeatMs, 20, 10_000),
    misses: int(file, r, "misses", d.misses, 2, 100),
    priority: int(file, r, "priority", d.priority, 0, 255),
    windowMessages: int(file, r, "windowMessages", d.windowMessages, 8, 65536),
    resendMs: int(file, r, "resendMs", d.resendMs, 10, 10_000),
    maxBytesPerSec: int(file, r, "maxBytesPerSec", d.maxBytesPerSec, 100_000, 10_000_000_000),
    refreshSec: int(file, r, "refreshSec", d.refreshSec, 1, 3600),
    tickMs: int(file, r, "tickMs", d.tickMs, 1, 1000),
  };
  const ringEvents = int(file, r, "ringEvents", 65536, 256, 1 << 24);
  const garp = r.garp ?? true;
  if (typeof garp !== "boolean") throw bad(file, "garp", garp, "true or false");
  let ec2: Ec2Settings | undefined;
  if (r.ec2 !== undefined) {
    const e = r.ec2 as Record<string, unknown>;
    if (typeof e !== "object" || e === null) throw bad(file, "ec2", e, "an object");
    const rts = e.routeTables;
    if (!Array.isArray(rts) || rts.some((x) => typeof x !== "string" || !/^rtb-[0-9a-f]+$/.test(x)))
      throw bad(file, "ec2.routeTables", rts, 'a list of route table ids ("rtb-...")');
    const ip = (k: string) => {
      const v = e[k];
      if (v === undefined) return undefined;
      if (typeof v !== "string" || parseIpv4(v) < 0)
        throw bad(file, `ec2.${k}`, v, "an IPv4 address");
      return v;
    };
    const allocationId =
      e.allocationId === undefined
        ? undefined
        : str(file, e, "allocationId", /^eipalloc-[0-9a-f]+$/);
    const secondaryPrivateIp = ip("secondaryPrivateIp");
    if (allocationId !== undefined && secondaryPrivateIp !== undefined)
      throw bad(
        file,
        "ec2.secondaryPrivateIp",
        secondaryPrivateIp,
        "either allocationId or secondaryPrivateIp, not both",
      );
    ec2 = {
      region:
        e.region === undefined ? undefined : str(file, e, "region", /^[a-z]{2}(-[a-z]+)+-\d$/),
      networkInterfaceId: str(file, e, "networkInterfaceId", /^eni-[0-9a-f]+$/),
      routeTables: rts as string[],
      destination:
        e.destination === undefined
          ? "0.0.0.0/0"
          : str(file, e, "destination", /^\d+\.\d+\.\d+\.\d+\/\d{1,2}$/),
      allocationId,
      privateIpAddress: ip("privateIpAddress"),
      secondaryPrivateIp,
      checkMs: int(file, e, "checkMs", 5000, 500, 600_000),
    };
  }
  const keepalivedFifo =
    r.keepalivedFifo === undefined ? undefined : str(file, r, "keepalivedFifo", /^\/./);
  const keepalivedInstance =
    r.keepalivedInstance === undefined
      ? undefined
      : str(file, r, "keepalivedInstance", /^[^"\s]{1,64}$/);
  if (keepalivedFifo !== undefined && arbiter !== "keepalived")
    throw bad(file, "keepalivedFifo", keepalivedFifo, 'nothing unless "arbiter" is "keepalived"');
  // The heartbeat arbiter's answer to split brain is EC2's: a route table targets one ENI, and
  // an active whose routes the peer took fences itself (controller.ts). On L2 nothing would
  // fence: a broken sync link would leave two actives answering ARP for the NAT address, each
  // with its own table. There VRRP (keepalived) decides.
  if (arbiter === "heartbeat" && ec2 === undefined)
    throw bad(
      file,
      "arbiter",
      arbiter,
      '"keepalived" unless "ec2" is set (the heartbeat arbiter fences itself through the EC2 routes)',
    );
  return {
    file,
    arbiter,
    listen,
    peer,
    sync,
    ringEvents,
    garp,
    keepalivedFifo,
    keepalivedInstance,
    ec2,
  };
}

export function loadHaSettings(file: string): HaSettings {
  let o: unknown;
  try {
    o = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new TunnatError(ErrorCode.ConfigFile, `cannot read HA file ${file}: ${errorMessage(e)}`);
  }
  return parseHaSettings(file, o);
}
