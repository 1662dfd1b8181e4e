/**
 * Pure IPv4 address helpers for the control plane and tests: text <-> host-order uint32.
 * No I/O, no allocation beyond the returned values; never used per packet.
 */

/** A prefix as the core stores it: network address (host order, masked) and length. */
export interface Cidr {
  addr: number;
  len: number;
}

/**
 * Parse dotted-quad IPv4 text into a host-order uint32, or -1. Strict: exactly four decimal
 * octets 0..255 and no leading zeros, because inet_aton would read "010" as octal 8 and a
 * config that means something else than it says is worse than one that is refused.
 */
export function parseIpv4(s: string): number {
  if (typeof s !== "string" || s.length < 7 || s.length > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return -1; // leading zero
      octet = octet * 10 + (c - 48);
      digits++;
      if (octet > 255) return -1;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return (value * 256 + octet) >>> 0;
}

/** Host-order uint32 to dotted-quad text. */
export function formatIpv4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Netmask for a prefix length 0..32, host order. */
export function prefixMask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/**
 * Parse "A.B.C.D/N" (or a bare address, read as /32). Returns null when the text is not a prefix.
 * `hostBits` is true when bits below the mask were set ("172.16.5.9/20"): the caller decides whether
 * that is an error; `addr` is always the masked network address.
 */
export function parseCidr(s: string): (Cidr & { hostBits: boolean }) | null {
  if (typeof s !== "string") return null;
  const slash = s.indexOf("/");
  const ipText = slash < 0 ? s : s.slice(0, slash);
  const ip = parseIpv4(ipText);
  if (ip < 0) return null;
  let len = 32;
  if (slash >= 0) {
    const lenText = s.slice(slash + 1);
    if (!/^(?:[0-9]|[12][0-9]|3[0-2])$/.test(lenText)) return null;
    len = Number(lenText);
  }
  const addr = (ip & prefixMask(len)) >>> 0;
  return { addr, len, hostBits: addr !== ip };
}

/** "A.B.C.D/N" text for a prefix. */
export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.addr)}/${c.len}`;
}

/** True when host-order address `ip` lies inside prefix `c`. */
export function cidrContains(c: Cidr, ip: number): boolean {
  return (ip & prefixMask(c.len)) >>> 0 === c.addr >>> 0;
}

/** True when two prefixes share at least one address. */
export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  const len = Math.min(a.len, b.len);
  const m = prefixMask(len);
  return (a.addr & m) >>> 0 === (b.addr & m) >>> 0;
}
