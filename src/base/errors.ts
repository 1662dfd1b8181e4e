/**
 * The control plane's one error class. Every failure an operator can see carries a stable `code`
 * (documented in docs/errors.md; a unit test keeps the two in step) and a message that says what
 * to do, in the manner of undici and fastify errors. The packet path never throws these.
 */

export const ErrorCode = {
  /** A setting is missing, malformed or out of range (flag, env, file). Exit code 2. */
  Config: "TUNNAT_ERR_CONFIG",
  /** The config file cannot be read or is not a JSON object. Exit code 2. */
  ConfigFile: "TUNNAT_ERR_CONFIG_FILE",
  /** /dev/net/tun is missing or cannot be opened. */
  NoTun: "TUNNAT_ERR_NO_TUN",
  /** A prerequisite is missing: CAP_NET_ADMIN, ip_forward, an interface, the ip tool. */
  Prereq: "TUNNAT_ERR_PREREQ",
  /** An `ip` command or sysctl write of the kernel plumbing failed (everything was undone). */
  Plumbing: "TUNNAT_ERR_PLUMBING",
  /** The control socket or HTTP listener could not be set up or reached. */
  Control: "TUNNAT_ERR_CONTROL",
  /** The daemon is not running (no control socket). */
  NotRunning: "TUNNAT_ERR_NOT_RUNNING",
  /** The data path (translator, loop or device) failed to start. */
  Datapath: "TUNNAT_ERR_DATAPATH",
  /** A `tunnat lab` step failed (the lab was torn down). */
  Lab: "TUNNAT_ERR_LAB",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Exit status a CLI command uses for an error of this code. */
export function exitCodeFor(code: string): number {
  return code === ErrorCode.Config || code === ErrorCode.ConfigFile ? 2 : 1;
}

export class TunnatError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TunnatError";
    this.code = code;
  }
}

export function isTunnatError(e: unknown): e is TunnatError {
  return e instanceof TunnatError;
}

/** Message text of any thrown value. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
