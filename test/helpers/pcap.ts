/**
 * test/helpers/pcap.ts — a tiny reader for classic pcap files (not pcapng), enough for the kernel
 * captures in test/fixtures. Each record is stripped to its IPv4 packet; other frames (ARP, IPv6)
 * are skipped. Link types: EN10MB (1, with one optional 802.1Q tag), RAW (101, and the BSD 12/14
 * aliases), LINUX_SLL (113) and LINUX_SLL2 (276).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const LINKTYPE_EN10MB = 1;
const LINKTYPE_RAW = 101;
export const LINKTYPE_LINUX_SLL = 113;
const LINKTYPE_LINUX_SLL2 = 276;

interface PcapRecord {
  /** Index of the record in the file (skipped frames keep their numbers). */
  index: number;
  /** Seconds since the epoch, with microsecond or nanosecond fraction. */
  time: number;
  /** The frame's original length on the wire, and the bytes captured. */
  origLen: number;
  /** The IPv4 packet (a copy), from its first header byte to the end of the captured bytes. */
  ip: Uint8Array;
}

export interface Pcap {
  linkType: number;
  snapLen: number;
  records: PcapRecord[];
}

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_VLAN = 0x8100;

export function readPcap(path: string): Pcap {
  return parsePcap(new Uint8Array(readFileSync(path)));
}

function parsePcap(file: Uint8Array): Pcap {
  if (file.length < 24) throw new Error(`pcap: ${file.length} bytes, no file header`);
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const magic = v.getUint32(0, true);
  let le: boolean;
  let nanos: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) {
    le = true;
    nanos = magic === 0xa1b23c4d;
  } else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) {
    le = false;
    nanos = magic === 0x4d3cb2a1;
  } else {
    throw new Error(`pcap: bad magic 0x${magic.toString(16)} (pcapng is not supported)`);
  }
  const snapLen = v.getUint32(16, le);
  const linkType = v.getUint32(20, le) & 0x0fffffff; // the top bits carry FCS information
  const records: PcapRecord[] = [];
  let at = 24;
  for (let index = 0; at < file.length; index++) {
    if (at + 16 > file.length) throw new Error(`pcap: record ${index} header is truncated`);
    const sec = v.getUint32(at, le);
    const frac = v.getUint32(at + 4, le);
    const inclLen = v.getUint32(at + 8, le);
    const origLen = v.getUint32(at + 12, le);
    at += 16;
    if (at + inclLen > file.length) throw new Error(`pcap: record ${index} data is truncated`);
    const frame = file.subarray(at, at + inclLen);
    at += inclLen;
    const ipOff = ipv4Offset(frame, linkType);
    if (ipOff < 0) continue;
    records.push({
      index,
      time: sec + frac / (nanos ? 1e9 : 1e6),
      origLen,
      ip: frame.slice(ipOff),
    });
  }
  return { linkType, snapLen, records };
}

/** Offset of the IPv4 header inside a frame of the given link type, or -1 if it is not IPv4. */
function ipv4Offset(f: Uint8Array, linkType: number): number {
  const u16 = (i: number) => f[i] * 256 + f[i + 1];
  switch (linkType) {
    case LINKTYPE_EN10MB: {
      if (f.length < 14) return -1;
      let type = u16(12);
      let off = 14;
      if (type === ETHERTYPE_VLAN && f.length >= 18) {
        type = u16(16);
        off = 18;
      }
      return type === ETHERTYPE_IPV4 ? off : -1;
    }
    case LINKTYPE_LINUX_SLL: // 16-byte cooked header, protocol at 14
      return f.length >= 16 && u16(14) === ETHERTYPE_IPV4 ? 16 : -1;
    case LINKTYPE_LINUX_SLL2: // 20-byte cooked header, protocol at 0
      return f.length >= 20 && u16(0) === ETHERTYPE_IPV4 ? 20 : -1;
    case LINKTYPE_RAW:
    case 12:
    case 14:
      return f.length >= 1 && f[0] >>> 4 === 4 ? 0 : -1;
    default:
      throw new Error(`pcap: link type ${linkType} is not supported`);
  }
}

/**
 * Absolute path of a file in test/fixtures, found by walking up from this module, so it works from
 * dist/test/helpers (compiled) as well as from test/helpers (run through a TS loader).
 */
export function fixturePath(name: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, "test", "fixtures", "capture.sh");
    if (existsSync(candidate)) return join(dir, "test", "fixtures", name);
    dir = dirname(dir);
  }
  throw new Error(`test/fixtures not found above ${fileURLToPath(import.meta.url)}`);
}
