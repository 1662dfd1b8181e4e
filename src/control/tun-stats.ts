/**
 * The TUN device's own kernel counters, read from sysfs (/sys/class/net/<tun>/statistics/*, the
 * numbers `ip -s link` prints) at scrape time and for `tunnat stats`, never on the data path.
 *
 * They count what tunnat's own counters cannot see: packets the kernel meant for the daemon but
 * dropped because the TUN's queue (tx_queue_len packets) was full — the daemon did not read fast
 * enough, or was stopped — never reach userspace, so no tunnat counter can count them. In the
 * kernel's terms the TUN *transmits* to the daemon (tun_net_xmit drops into tx_dropped when its
 * ring is full) and *receives* what the daemon writes (rx_*). Here the directions are named from
 * the daemon's side: `to_daemon` (kernel tx) and `from_daemon` (kernel rx).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

const SYS_CLASS_NET = "/sys/class/net";

/** One direction's counters. */
export interface TunDirection {
  packets: number;
  bytes: number;
  dropped: number;
  errors: number;
  fifoErrors: number;
}

export interface TunCounters {
  /** Kernel tx: packets queued for the daemon to read. */
  toDaemon: TunDirection;
  /** Kernel rx: packets the daemon wrote. */
  fromDaemon: TunDirection;
  /** The TUN's queue length (packets the kernel holds for the daemon before dropping). */
  txQueueLen: number;
}

function num(path: string): number {
  const n = Number(readFileSync(path, "utf8").trim());
  return Number.isFinite(n) ? n : 0;
}

function direction(dir: string, k: "tx" | "rx"): TunDirection {
  return {
    packets: num(join(dir, `${k}_packets`)),
    bytes: num(join(dir, `${k}_bytes`)),
    dropped: num(join(dir, `${k}_dropped`)),
    errors: num(join(dir, `${k}_errors`)),
    fifoErrors: num(join(dir, `${k}_fifo_errors`)),
  };
}

/**
 * The counters of interface `name`, or null when it has none to read (gone, or no sysfs). A dozen
 * small sysfs reads; called per scrape or `tunnat stats`, never per packet.
 */
export function readTunCounters(name: string, root = SYS_CLASS_NET): TunCounters | null {
  if (name === "" || name.includes("/") || name === "." || name === "..") return null;
  const dev = join(root, name);
  try {
    const st = join(dev, "statistics");
    return {
      toDaemon: direction(st, "tx"),
      fromDaemon: direction(st, "rx"),
      txQueueLen: num(join(dev, "tx_queue_len")),
    };
  } catch {
    return null;
  }
}
