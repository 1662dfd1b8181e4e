/**
 * sd_notify(3) through the addon (native/notify.cc): one datagram to the AF_UNIX socket named by
 * NOTIFY_SOCKET, which systemd sets for a Type=notify service. Node has no datagram unix sockets,
 * hence the addon. Without NOTIFY_SOCKET (not under systemd, or Type=simple) nothing is sent.
 *
 * This file only sends; what to say and when is src/control/systemd.ts.
 */
import { type ErrnoError, errnoError } from "./errno.js";
import { loadAddon } from "./tun.js";

export type NotifyResult = "sent" | "unset";

/**
 * Send `message` ("READY=1\nSTATUS=..." — newline-separated assignments) to `socketPath`, by
 * default $NOTIFY_SOCKET (an absolute path or "@abstract-name"). Resolves "unset" without a
 * socket; throws an ErrnoError (code ENOENT, ECONNREFUSED, EINVAL, ...) when the send fails.
 */
export function sdNotify(
  message: string,
  socketPath: string | undefined = process.env.NOTIFY_SOCKET,
): NotifyResult {
  if (socketPath === undefined || socketPath === "") return "unset";
  const a = loadAddon();
  const errno = a.notify(socketPath, message);
  if (errno !== 0) throw notifyError(errno, a.errnoName(errno), socketPath);
  return "sent";
}

function notifyError(errno: number, name: string, socketPath: string): ErrnoError {
  return errnoError(errno, name, "sendto", `cannot notify ${socketPath}`);
}

/**
 * CLOCK_MONOTONIC in microseconds, for MONOTONIC_USEC= next to RELOADING=1 (systemd ≥ 253 matches
 * a reload's messages by it; older versions ignore it). process.hrtime reads the same clock
 * (libuv's uv_hrtime is CLOCK_MONOTONIC on Linux).
 */
export function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}
