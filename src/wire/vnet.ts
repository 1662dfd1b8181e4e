/**
 * struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the 10-byte header a TUN opened with
 * IFF_VNET_HDR puts in front of every packet. Multi-byte fields are little-endian: the TUN uses the
 * host's byte order unless TUNSETVNETLE/BE say otherwise, and tunnat only runs on little-endian hosts.
 */
const FLAGS = 0;
export const GSO_TYPE = 1;
const HDR_LEN = 2;
const GSO_SIZE = 4;
const CSUM_START = 6;
const CSUM_OFFSET = 8;
export const LEN = 10;

/** The transport checksum holds only the pseudo-header sum; the kernel finishes it. */
export const F_NEEDS_CSUM = 1;
// (VIRTIO_NET_HDR_F_DATA_VALID = 2 is never set on what a TUN reads.)

export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
// GSO_UDP (3, UFO) and GSO_TCPV6 (4) are not IPv4 segmentation the core rewrites.
export const GSO_UDP_L4 = 5;
export const GSO_ECN = 0x80;

export function flags(buf: Uint8Array, off: number): number {
  return buf[off + FLAGS]!;
}
export function gsoType(buf: Uint8Array, off: number): number {
  return buf[off + GSO_TYPE]! & ~GSO_ECN;
}
export function gsoSize(buf: Uint8Array, off: number): number {
  return buf[off + GSO_SIZE]! | (buf[off + GSO_SIZE + 1]! << 8);
}
export function csumStart(buf: Uint8Array, off: number): number {
  return buf[off + CSUM_START]! | (buf[off + CSUM_START + 1]! << 8);
}
export function csumOffset(buf: Uint8Array, off: number): number {
  return buf[off + CSUM_OFFSET]! | (buf[off + CSUM_OFFSET + 1]! << 8);
}
/** Write an all-zero header: a plain packet with a complete checksum and no GSO. */
export function clear(buf: Uint8Array, off: number): void {
  for (let i = 0; i < LEN; i++) buf[off + i] = 0;
}
export function write(
  buf: Uint8Array,
  off: number,
  f: number,
  gso: number,
  hdrLen: number,
  gsoSz: number,
  cStart: number,
  cOff: number,
): void {
  buf[off + FLAGS] = f;
  buf[off + GSO_TYPE] = gso;
  buf[off + HDR_LEN] = hdrLen & 0xff;
  buf[off + HDR_LEN + 1] = hdrLen >>> 8;
  buf[off + GSO_SIZE] = gsoSz & 0xff;
  buf[off + GSO_SIZE + 1] = gsoSz >>> 8;
  buf[off + CSUM_START] = cStart & 0xff;
  buf[off + CSUM_START + 1] = cStart >>> 8;
  buf[off + CSUM_OFFSET] = cOff & 0xff;
  buf[off + CSUM_OFFSET + 1] = cOff >>> 8;
}
/** Length of the headers (IP + transport) repeated in every GSO segment. */
export function gsoHdrLen(buf: Uint8Array, off: number): number {
  return buf[off + HDR_LEN]! | (buf[off + HDR_LEN + 1]! << 8);
}
