/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 */

/** Fold a 32-bit accumulator of 16-bit words into 16 bits (end-around carry). */
export function fold(acc: number): number {
  let s = acc;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 65536);
  return s;
}

/**
 * Add the bytes buf[off..off+len) as big-endian 16-bit words to `acc` (an odd last byte is padded
 * with zero, RFC 1071 §4.1). The result is folded so it stays exact for any length.
 */
export function sum(buf: Uint8Array, off: number, len: number, acc = 0): number {
  let s = acc;
  const end = off + (len & ~1);
  let i = off;
  while (i < end) {
    // Fold every 32 Ki words so the accumulator never leaves the exact integer range of bit ops.
    const stop = Math.min(end, i + 65536);
    for (; i < stop; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
    s = fold(s);
  }
  if (len & 1) s += buf[end]! << 8;
  return fold(s);
}

/** The checksum field value for data whose folded sum is `acc`. */
export function finish(acc: number): number {
  return fold(acc) ^ 0xffff;
}

/** Checksum of buf[off..off+len) with an optional initial sum (e.g. a pseudo-header). */
export function checksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return finish(sum(buf, off, len, initial));
}

/** Sum of the TCP/UDP pseudo-header (RFC 793 §3.1, RFC 768) for addresses in host order. */
export function pseudoHeaderSum(src: number, dst: number, proto: number, l4len: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + l4len);
}

/** RFC 1624 term for a 16-bit field changing from `oldv` to `newv`: ~m + m'. */
export function delta16(oldv: number, newv: number): number {
  return (oldv ^ 0xffff) + newv;
}

/** RFC 1624 term for a 32-bit field (an address) changing from `oldv` to `newv`. */
export function delta32(oldv: number, newv: number): number {
  return ((oldv >>> 16) ^ 0xffff) + ((oldv & 0xffff) ^ 0xffff) + (newv >>> 16) + (newv & 0xffff);
}

/** The delta that undoes `d` (ones'-complement negation). */
export function negate(d: number): number {
  let s = (d & 0xffff) + (d >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return s ^ 0xffff;
}

/**
 * Apply a folded or unfolded delta to a checksum field: HC' = ~(~HC + ~m + m'), RFC 1624 eqn. 3,
 * which never produces the -0 problem of eqn. 2.
 */
export function adjust(csum: number, delta: number): number {
  // Inputs are a 16-bit field plus at most a few 16-bit terms: two end-around carries suffice.
  let s = (csum ^ 0xffff) + delta;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return s ^ 0xffff;
}

/**
 * Apply a delta to a *partial* checksum: with CHECKSUM_PARTIAL (virtio NEEDS_CSUM) the field holds
 * the folded pseudo-header sum, not its complement (Linux `tcp_v4_send_check` stores
 * `~tcp_v4_check(len, saddr, daddr, 0)`), so the delta is added directly.
 */
export function adjustPartial(field: number, delta: number): number {
  let s = field + delta;
  s = (s & 0xffff) + (s >>> 16);
  return (s & 0xffff) + (s >>> 16);
}
