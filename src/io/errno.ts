/**
 * errno classification at the I/O boundary (STYLE.md "Errors"), done once here so the layers above
 * see three outcomes and never an errno: like wireguard-go's tun reader and serialport's bindings,
 * a transient error is retried, a vanished device ends the data path cleanly, anything else is a
 * bug or a misconfiguration and is fatal. Linux errno numbers (asm-generic/errno*.h); tunnat only
 * runs on Linux.
 */

export const EINTR = 4;
export const EIO = 5;
export const ENXIO = 6;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENODEV = 19;
export const EINVAL = 22;
/** tun_chr_read_iter/tun_chr_write_iter answer EBADFD once the interface was deleted (tun_get() == NULL). */
export const EBADFD = 77;

export type ErrnoClass = "retry" | "gone" | "fatal";

/** EAGAIN/EINTR: try again; EBADF/EBADFD/ENXIO/ENODEV: the device is gone; anything else: fatal. */
export function classifyErrno(errno: number): ErrnoClass {
  switch (errno) {
    case EAGAIN:
    case EINTR:
      return "retry";
    case EBADF:
    case EBADFD:
    case ENXIO:
    case ENODEV:
      return "gone";
    default:
      return "fatal";
  }
}

/** An Error shaped like Node's system errors: `.code` is the errno name, `.errno` its number. */
export interface ErrnoError extends Error {
  code: string;
  errno: number;
  syscall?: string;
}

export function errnoError(
  errno: number,
  name: string,
  syscall: string,
  message: string,
): ErrnoError {
  const e = new Error(`${message}: ${name}`) as ErrnoError;
  e.code = name;
  e.errno = errno;
  e.syscall = syscall;
  return e;
}

export function isErrnoError(e: unknown): e is ErrnoError {
  return (
    e instanceof Error &&
    typeof (e as Partial<ErrnoError>).code === "string" &&
    typeof (e as Partial<ErrnoError>).errno === "number"
  );
}

/**
 * What to do when /dev/net/tun cannot be had, by errno and the call that failed: the file's mode
 * (open EACCES: this user may not read and write it), a device cgroup or LSM (open EPERM), the
 * kernel (ENOENT/ENODEV/ENXIO: no tun module, or a container without the device), or the
 * capability (TUNSETIFF EPERM: creating an interface needs CAP_NET_ADMIN).
 */
export function devTunHint(code: string, syscall: string | undefined): string {
  switch (code) {
    case "ENOENT":
    case "ENODEV":
    case "ENXIO":
      return "the kernel has no TUN support: load the tun module (modprobe tun) or, in a container, pass --device /dev/net/tun";
    case "EACCES":
      return "this user may not open /dev/net/tun (its mode, often 0600 root on minimal hosts): make it 0666 as udev's default rule does, or give the daemon's group rw (chgrp tunnat /dev/net/tun; chmod 0660 /dev/net/tun); tunnat.service does the latter in its ExecStartPre";
    case "EPERM":
      return syscall === "open"
        ? "opening /dev/net/tun was refused by a device policy: systemd DevicePolicy= needs DeviceAllow=/dev/net/tun rw, docker needs --device /dev/net/tun, or an LSM denies it"
        : "creating a TUN needs CAP_NET_ADMIN: run as root or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN, docker --cap-add NET_ADMIN)";
    default:
      return "see native-notes/README.md for what the kernel needs";
  }
}
