/**
 * Child process of test/netns/tun.test.ts, run as `ip netns exec NS node tun-child.js MODE NAME`
 * inside a namespace the test made. It opens a TUN through the addon, gives it an address, routes
 * a test /24 into it, exercises the device and prints ONE JSON line with what it saw on stdout.
 *
 *   namespace NS (made by the test)
 *   ┌────────────────────────────────────────────────────────────┐
 *   │ kernel stack 10.213.0.1/32 ──► NAME (TUN) ──► this process  │
 *   │   route 10.213.1.0/24 dev NAME   ◄── written back ──┘       │
 *   └────────────────────────────────────────────────────────────┘
 *
 * Modes:
 *  rw   plain TUN: a UDP datagram sent from the namespace arrives in a batch with the right bytes;
 *       ICMP echo requests are answered by swapping addresses (checksum fixed incrementally) and
 *       `ping -c 3` succeeds; a second multi-queue queue opens; deleting the link reaches onError.
 *  burst  50 datagrams into a 4-slot arena: all arrive, in batches of at most 4 (the drain loop
 *       runs again after a full arena, so nothing is stranded).
 *  throw  a batch handler that closes the device and throws: the error reaches
 *       'uncaughtException' and no further batch is delivered.
 *  mq   two IFF_MULTI_QUEUE opens of one name give two fds of one interface.
 *  steer  two queues of one multi-queue TUN: where 32 UDP flows arrive (the kernel's flow hash),
 *       then each flow's answer is written on the OTHER queue and the flow sends again: does it
 *       follow the queue that last wrote it? Also: a length beyond the slot is refused, not cut.
 *  gso  vnetHdr + offloads: a tiny TCP responder (SYN-ACK, ACKs) lets a local client send 1 MB
 *       into the TUN; reports the GSO super-packets (gso_type TCPV4, longer than the MTU) seen.
 *
 * Run without arguments (a test runner globbing dist/test) it does nothing and exits 0.
 */

import { execFileSync, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { connect } from "node:net";
import { openTun } from "../../../src/io/tun.js";

const LOCAL = "10.213.0.1";
const PEER = "10.213.1.2";
const ROUTE = "10.213.1.0/24";
const UDP_PORT = 9999;
const TCP_PORT = 5001;
const MTU = 1500;
const VNET = 10;

const ip = (...args: string[]): void => {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "inherit"] });
};

function plumb(name: string): void {
  ip("link", "set", "lo", "up");
  ip("addr", "add", `${LOCAL}/32`, "dev", name);
  ip("link", "set", name, "mtu", String(MTU), "up");
  ip("route", "add", ROUTE, "dev", name);
}

function addr(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}
const u16 = (b: Uint8Array, off: number): number => (b[off] << 8) | b[off + 1];
const u32 = (b: Uint8Array, off: number): number =>
  ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
function put16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}
function put32(b: Uint8Array, off: number, v: number): void {
  put16(b, off, v >>> 16);
  put16(b, off + 2, v & 0xffff);
}

/** RFC 1071 one's-complement sum over b[off..off+len), plus `initial`. */
function sum(b: Uint8Array, off: number, len: number, initial = 0): number {
  let s = initial;
  for (let i = 0; i + 1 < len; i += 2) s += u16(b, off + i);
  if (len & 1) s += b[off + len - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}
const fold = (s: number): number => ~s & 0xffff;

function ipHeaderOk(b: Uint8Array, ipOff: number): boolean {
  const ihl = (b[ipOff] & 0x0f) * 4;
  return fold(sum(b, ipOff, ihl)) === 0;
}

/** Full transport checksum of an IPv4 packet at ipOff (TCP or UDP), pseudo-header included. */
function l4Sum(b: Uint8Array, ipOff: number): number {
  const ihl = (b[ipOff] & 0x0f) * 4;
  const total = u16(b, ipOff + 2);
  const l4len = total - ihl;
  let s = sum(b, ipOff + 12, 8);
  s += b[ipOff + 9];
  s += l4len;
  return sum(b, ipOff + ihl, l4len, s);
}

function swapAddrs(b: Uint8Array, ipOff: number): void {
  for (let i = 0; i < 4; i++) {
    const t = b[ipOff + 12 + i];
    b[ipOff + 12 + i] = b[ipOff + 16 + i];
    b[ipOff + 16 + i] = t;
  }
}

function emit(result: unknown): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    p.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    p.on("close", (code) => resolve({ code, out }));
  });
}

// --- rw ----------------------------------------------------------------------------------------

async function modeRw(name: string): Promise<void> {
  const dev = openTun({ name, slots: 16 });
  const result: Record<string, unknown> = {
    name: dev.name,
    fd: dev.fd,
    vnetHdr: dev.vnetHdr,
    offloads: dev.offloads,
  };
  try {
    plumb(dev.name);
    const probe = Buffer.from(`tunnat-udp-probe-${process.pid}`);
    let udpResolve: (v: Record<string, unknown>) => void = () => {};
    const udpSeen = new Promise<Record<string, unknown>>((r) => {
      udpResolve = r;
    });
    let echoes = 0;
    const batchSizes: number[] = [];
    let deviceError: Error | undefined;
    let goneResolve: (e: Error) => void = () => {};
    const gone = new Promise<Error>((r) => {
      goneResolve = r;
    });

    dev.start(
      (count) => {
        batchSizes.push(count);
        const b = dev.buffer;
        for (let i = 0; i < count; i++) {
          const off = i * dev.slotSize;
          const len = dev.lengths[i];
          dev.lengths[i] = 0;
          if (len < 20 || b[off] >> 4 !== 4) continue;
          const ihl = (b[off] & 0x0f) * 4;
          const proto = b[off + 9];
          if (proto === 17 && u16(b, off + ihl + 2) === UDP_PORT) {
            const payload = b.subarray(off + ihl + 8, off + len);
            udpResolve({
              len,
              totalLength: u16(b, off + 2),
              src: addr(b, off + 12),
              dst: addr(b, off + 16),
              dport: u16(b, off + ihl + 2),
              payloadMatches: Buffer.from(payload).equals(probe),
              ipChecksumOk: ipHeaderOk(b, off),
              udpChecksumOk: fold(l4Sum(b, off)) === 0,
            });
          } else if (proto === 1 && b[off + ihl] === 8) {
            // Echo request → reply: swap addresses (the IP checksum covers both, so it does not
            // change) and turn type 8 into 0, which raises the ICMP checksum by 0x0800 (RFC 1624).
            swapAddrs(b, off);
            b[off + ihl] = 0;
            let c = u16(b, off + ihl + 2) + 0x0800;
            c = (c & 0xffff) + (c >>> 16);
            put16(b, off + ihl + 2, c);
            dev.lengths[i] = len;
            echoes++;
          }
        }
        dev.write(count);
      },
      (err) => {
        deviceError = err;
        goneResolve(err);
      },
    );

    const sock = createSocket("udp4");
    await new Promise<void>((r) => sock.send(probe, UDP_PORT, PEER, () => r()));
    sock.close();
    result.udp = await withTimeout(udpSeen, 3000, "UDP datagram in a batch");

    const ping = await run("ping", ["-c", "3", "-i", "0.2", "-W", "2", PEER]);
    result.pingExit = ping.code;
    result.pingOut = ping.out;
    result.echoesAnswered = echoes;
    result.batchSizes = batchSizes;
    result.stats = { ...dev.stats };

    // A second queue of the same interface needs IFF_MULTI_QUEUE on both: the first was opened
    // without it, so the kernel must refuse (EINVAL/EBUSY) with a TUNNAT_ERR_NO_TUN error.
    try {
      openTun({ name: dev.name, multiQueue: true }).close();
      result.secondQueueOnSingle = "opened";
    } catch (e) {
      result.secondQueueOnSingle = (e as { code?: string }).code;
    }

    // Deleting the interface under an open fd: the device must report "gone" through onError.
    ip("link", "del", dev.name);
    const err = await withTimeout(gone, 3000, "onError after ip link del");
    result.goneError = {
      code: (err as { code?: string }).code,
      errno: (err as { errno?: number }).errno,
      severity: (err as { severity?: string }).severity,
    };
    result.closedAfterGone = dev.closed;
    result.deviceError = deviceError !== undefined;
  } finally {
    dev.close();
    dev.close();
  }
  emit(result);
}

// --- burst -------------------------------------------------------------------------------------

/** More datagrams than slots: every one must arrive, in batches no larger than the arena. */
async function modeBurst(name: string): Promise<void> {
  const slots = 4;
  const n = 50;
  const dev = openTun({ name, slots });
  const result: Record<string, unknown> = { slots, sent: n };
  try {
    plumb(dev.name);
    const batchSizes: number[] = [];
    const seen = new Set<number>();
    let allResolve: () => void = () => {};
    const all = new Promise<void>((r) => {
      allResolve = r;
    });
    dev.start((count) => {
      batchSizes.push(count);
      const b = dev.buffer;
      for (let i = 0; i < count; i++) {
        const off = i * dev.slotSize;
        const ihl = (b[off] & 0x0f) * 4;
        if (b[off + 9] === 17 && u16(b, off + ihl + 2) === UDP_PORT)
          seen.add(u16(b, off + ihl + 8));
      }
      if (seen.size === n) allResolve();
    });
    const sock = createSocket("udp4");
    const sends: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const payload = Buffer.alloc(2);
      payload.writeUInt16BE(i);
      sends.push(new Promise((r) => sock.send(payload, UDP_PORT, PEER, () => r())));
    }
    await Promise.all(sends);
    sock.close();
    await withTimeout(all, 3000, `${n} datagrams`).catch(() => undefined);
    Object.assign(result, { received: seen.size, batchSizes, stats: { ...dev.stats } });
  } finally {
    dev.close();
  }
  emit(result);
}

// --- throw -------------------------------------------------------------------------------------

/** A batch handler that throws reaches process 'uncaughtException'; close() inside it is safe. */
async function modeThrow(name: string): Promise<void> {
  const dev = openTun({ name, slots: 4 });
  const result: Record<string, unknown> = {};
  try {
    plumb(dev.name);
    let caughtResolve: (msg: string) => void = () => {};
    const caught = new Promise<string>((r) => {
      caughtResolve = r;
    });
    process.once("uncaughtException", (e) => caughtResolve(e.message));
    let calls = 0;
    dev.start(() => {
      calls++;
      dev.close();
      throw new Error("boom from onBatch");
    });
    const sock = createSocket("udp4");
    await new Promise<void>((r) => sock.send(Buffer.from("x"), UDP_PORT, PEER, () => r()));
    await new Promise<void>((r) => sock.send(Buffer.from("y"), UDP_PORT, PEER, () => r()));
    sock.close();
    result.uncaught = await withTimeout(caught, 3000, "uncaughtException");
    await new Promise((r) => setTimeout(r, 100));
    result.calls = calls;
    result.closed = dev.closed;
  } finally {
    dev.close();
  }
  emit(result);
}

// --- mq ----------------------------------------------------------------------------------------

function modeMq(name: string): void {
  const a = openTun({ name, multiQueue: true, vnetHdr: true });
  const b = openTun({ name, multiQueue: true, vnetHdr: true });
  emit({
    names: [a.name, b.name],
    fds: [a.fd, b.fd],
    multiQueue: [a.multiQueue, b.multiQueue],
    offloads: a.offloads,
  });
  a.close();
  b.close();
}

// --- gso ---------------------------------------------------------------------------------------

const ISN = 0x10000000;

/** Turn the TCP segment in slot `off` (with its vnet header) into our answer, in place. */
function answerTcp(b: Uint8Array, off: number, synAck: boolean, ack: number): number {
  const ipOff = off + VNET;
  const ihl = (b[ipOff] & 0x0f) * 4;
  const tcp = ipOff + ihl;
  b.fill(0, off, off + VNET); // plain packet, complete checksums, no GSO
  swapAddrs(b, ipOff);
  const sport = u16(b, tcp);
  put16(b, tcp, u16(b, tcp + 2));
  put16(b, tcp + 2, sport);
  put32(b, tcp + 4, synAck ? ISN : ISN + 1);
  put32(b, tcp + 8, ack);
  const doff = synAck ? 24 : 20;
  b[tcp + 12] = (doff / 4) << 4;
  b[tcp + 13] = synAck ? 0x12 : 0x10;
  put16(b, tcp + 14, 65535);
  put16(b, tcp + 16, 0);
  put16(b, tcp + 18, 0);
  if (synAck) {
    b[tcp + 20] = 2; // MSS option
    b[tcp + 21] = 4;
    put16(b, tcp + 22, MTU - 40);
  }
  const total = ihl + doff;
  put16(b, ipOff + 2, total);
  b[ipOff + 8] = 64;
  put16(b, ipOff + 10, 0);
  put16(b, ipOff + 10, fold(sum(b, ipOff, ihl)));
  put16(b, tcp + 16, fold(l4Sum(b, ipOff)));
  return VNET + total;
}

/** csum_start of the vnet header at `off` if csum_offset is TCP's 16, else -1. */
function csumAt(b: Uint8Array, off: number): number {
  const start = b[off + 6] | (b[off + 7] << 8);
  const offset = b[off + 8] | (b[off + 9] << 8);
  return offset === 16 ? start : -1;
}

async function modeGso(name: string): Promise<void> {
  const dev = openTun({ name, vnetHdr: true, offloads: true, slots: 32 });
  const result: Record<string, unknown> = { name: dev.name, offloads: dev.offloads };
  try {
    plumb(dev.name);
    let gsoTcpv4 = 0;
    let needsCsum = 0;
    let partialOk = 0;
    let partialBad = 0;
    let maxLen = 0;
    let maxGsoSize = 0;
    let bytesAcked = 0;
    let segments = 0;
    let badVnet = 0;
    dev.start((count) => {
      const b = dev.buffer;
      for (let i = 0; i < count; i++) {
        const off = i * dev.slotSize;
        const len = dev.lengths[i];
        dev.lengths[i] = 0;
        const ipOff = off + VNET;
        if (len < VNET + 40 || b[ipOff] >> 4 !== 4 || b[ipOff + 9] !== 6) continue;
        const ihl = (b[ipOff] & 0x0f) * 4;
        const tcp = ipOff + ihl;
        if (u16(b, tcp + 2) !== TCP_PORT) continue;
        const flags = b[tcp + 13];
        const seq = u32(b, tcp + 4);
        const gsoType = b[off + 1] & 0x7f;
        if ((b[off] & 1) !== 0) {
          needsCsum++;
          // The field must hold the folded pseudo-header sum, not complemented (what
          // native-notes/README.md tells the translator), with csum_start at the TCP header.
          const pseudo = sum(b, ipOff + 12, 8, 6 + (u16(b, ipOff + 2) - ihl));
          if (u16(b, tcp + 16) === pseudo && csumAt(b, off) === ihl) partialOk++;
          else partialBad++;
        }
        if (gsoType === 1) {
          gsoTcpv4++;
          maxGsoSize = Math.max(maxGsoSize, b[off + 4] | (b[off + 5] << 8));
        } else if (gsoType !== 0) badVnet++;
        maxLen = Math.max(maxLen, len);
        if (u16(b, ipOff + 2) !== len - VNET) badVnet++;
        if (flags & 0x02) {
          dev.lengths[i] = answerTcp(b, off, true, (seq + 1) >>> 0);
          continue;
        }
        if (flags & 0x04) continue; // RST
        const payload = len - VNET - ihl - (b[tcp + 12] >> 4) * 4;
        if (payload > 0 || flags & 0x01) {
          segments++;
          bytesAcked += payload;
          const ack = (seq + payload + (flags & 0x01 ? 1 : 0)) >>> 0;
          dev.lengths[i] = answerTcp(b, off, false, ack);
        }
      }
      dev.write(count);
    });

    const total = 1 << 20;
    const s = connect({ host: PEER, port: TCP_PORT });
    const done = new Promise<void>((resolve, reject) => {
      s.on("connect", () => s.end(Buffer.alloc(total, 0x61), () => resolve()));
      s.on("error", reject);
    });
    try {
      await withTimeout(done, 8000, "1 MB TCP send into the TUN");
      // Let the last segments and ACKs cross.
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      s.destroy();
    }
    Object.assign(result, {
      gsoTcpv4,
      needsCsum,
      partialOk,
      partialBad,
      maxLen,
      maxGsoSize,
      bytesAcked,
      segments,
      badVnet,
      mtu: MTU,
      stats: { ...dev.stats },
    });
  } finally {
    dev.close();
  }
  emit(result);
}

// --- steer -------------------------------------------------------------------------------------

async function modeSteer(name: string): Promise<void> {
  const qs = [openTun({ name, multiQueue: true }), openTun({ name, multiQueue: true })];
  const flows = 32;
  const first = new Map<number, number>();
  const second = new Map<number, number>();
  let phase = 1;
  const result: Record<string, unknown> = { flows };
  try {
    plumb(name);
    qs.forEach((dev, q) => {
      dev.start((count) => {
        const b = dev.buffer;
        for (let i = 0; i < count; i++) {
          const off = i * dev.slotSize;
          const ihl = (b[off] & 0x0f) * 4;
          if (b[off + 9] !== 17 || u16(b, off + ihl + 2) !== UDP_PORT) continue;
          const sport = u16(b, off + ihl);
          if (phase === 1 && !first.has(sport)) {
            first.set(sport, q);
            // Answer on the other queue: swap addresses and ports (both sums stay valid).
            const other = qs[1 - q]!;
            const len = dev.lengths[i]!;
            other.buffer.set(b.subarray(off, off + len), 0);
            swapAddrs(other.buffer, 0);
            put16(other.buffer, ihl, UDP_PORT);
            put16(other.buffer, ihl + 2, sport);
            other.lengths[0] = len;
            other.write(1);
          } else if (phase === 2 && !second.has(sport)) second.set(sport, q);
        }
      });
    });
    const socks = Array.from({ length: flows }, () => createSocket("udp4"));
    const sendAll = () =>
      Promise.all(
        socks.map(
          (s) => new Promise<void>((r) => s.send(Buffer.from("q"), UDP_PORT, PEER, () => r())),
        ),
      );
    await sendAll();
    for (let i = 0; i < 40 && first.size < flows; i++) await new Promise((r) => setTimeout(r, 25));
    phase = 2;
    await sendAll();
    for (let i = 0; i < 40 && second.size < flows; i++) await new Promise((r) => setTimeout(r, 25));
    for (const s of socks) s.close();
    let moved = 0;
    for (const [sport, q] of first) if (second.get(sport) === 1 - q) moved++;
    const onQueue = [0, 0];
    for (const q of first.values()) onQueue[q]!++;
    // A length the slot cannot hold: refused and counted, nothing written.
    qs[0]!.lengths[0] = qs[0]!.slotSize + 1;
    const oversizeWritten = qs[0]!.write(1);
    Object.assign(result, {
      firstSeen: first.size,
      secondSeen: second.size,
      firstOnQueue: onQueue,
      followedTheWriter: moved,
      oversizeWritten,
      oversizeStats: { ...qs[0]!.stats },
    });
  } finally {
    for (const q of qs) q.close();
  }
  emit(result);
}

// --- main --------------------------------------------------------------------------------------

const [mode, name] = process.argv.slice(2);
if (mode !== undefined && name !== undefined) {
  const modes: Record<string, (name: string) => Promise<void>> = {
    rw: modeRw,
    gso: modeGso,
    burst: modeBurst,
    throw: modeThrow,
    steer: modeSteer,
  };
  const main = modes[mode]?.(name);
  if (mode === "mq") modeMq(name);
  else if (main === undefined) {
    process.stderr.write(`unknown mode ${mode}\n`);
    process.exitCode = 2;
  } else {
    main.catch((e: unknown) => {
      process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    });
  }
}
