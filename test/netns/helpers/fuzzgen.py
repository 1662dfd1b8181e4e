"""Writes the pcap files that the live fuzz (test/helpers/live-fuzz.ts) replays with tcpreplay:
random and mutated IPv4 packets for both directions of the gateway, built with struct (scapy
is too slow for a million packets). Usage:

  fuzzgen.py OUT_DIR COUNT SEED IN_SRC_MAC IN_DST_MAC OUT_SRC_MAC OUT_DST_MAC
             INSIDE_HOSTS(comma) VALID_DST MUTATED_DST NAT_ADDR OUTSIDE_SRCS(comma)

writes OUT_DIR/inside.pcap (COUNT frames, from an inside host to the gateway's inside MAC) and
OUT_DIR/outside.pcap (COUNT frames, from the internet side to the NAT address), and prints one
JSON line with the number of frames of each class and kind.

Classes:
- "valid": well-formed with every checksum correct (random TCP flags, TCP and IP options,
  UDP, ICMP echo, ICMP errors quoting garbage, first and later fragments). Inside ones go to
  VALID_DST only, so a capture of what the NAT emits towards VALID_DST holds only packets that
  entered with correct checksums (every one must leave with correct ones).
- "mutated": a valid packet, then truncated, given bad lengths, bad L4 checksums, flipped bytes,
  bad header lengths or garbage options. Most get a recomputed IP header checksum so that the
  kernel forwards them to the daemon; some keep a bad one (the kernel drops those). Inside ones go
  to MUTATED_DST.
"""

import json
import random
import struct
import sys


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip4(a):
    return bytes(int(x) for x in a.split("."))


def ip_header(src, dst, proto, plen, rnd, opts=b"", frag=0, ident=None, ttl=None):
    ihl = 5 + len(opts) // 4
    tl = ihl * 4 + plen
    h = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        rnd.choice((0, 0, 0, 0x10, 0x02, 0xB8)),
        tl,
        rnd.randrange(65536) if ident is None else ident,
        frag,
        rnd.randrange(2, 65) if ttl is None else ttl,
        proto,
        0,
        src,
        dst,
    ) + opts
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def fix_ip_checksum(pkt):
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or ihl > len(pkt):
        return pkt
    h = pkt[:10] + b"\0\0" + pkt[12:ihl]
    return h[:10] + struct.pack("!H", csum(h)) + pkt[12:]


def ip_options(rnd):
    k = rnd.randrange(4)
    if k == 0:
        return b"\x01\x01\x01\x01"  # NOPs
    if k == 1:
        return b"\x07\x0b\x04" + b"\0" * 8 + b"\x00"  # record route, room for 2
    if k == 2:
        return b"\x44\x0c\x05\x00" + b"\0" * 8  # timestamp
    return b"\x94\x04\x00\x00"  # router alert


def tcp_options(rnd):
    opts = b""
    for _ in range(rnd.randrange(4)):
        k = rnd.randrange(6)
        if k == 0:
            opts += struct.pack("!BBH", 2, 4, rnd.choice((536, 1220, 1460, 65495)))
        elif k == 1:
            opts += struct.pack("!BBB", 3, 3, rnd.randrange(15))
        elif k == 2:
            opts += b"\x04\x02"
        elif k == 3:
            opts += struct.pack("!BBII", 8, 10, rnd.randrange(2**32), rnd.randrange(2**32))
        elif k == 4:
            opts += b"\x01"
        else:
            n = rnd.randrange(2, 10)
            opts += bytes([rnd.randrange(9, 255), n]) + bytes(rnd.randrange(256) for _ in range(n - 2))
    opts = opts[:40]
    return opts + b"\0" * (-len(opts) % 4)


def l4_checksum(src, dst, proto, seg):
    return csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


TCP_FLAG_SETS = (0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12, 0x01, 0x00, 0x3F, 0x03, 0x06, 0xC2, 0x29)


def tcp_seg(src, dst, sport, dport, rnd, payload=b""):
    opts = tcp_options(rnd) if rnd.random() < 0.5 else b""
    off = (5 + len(opts) // 4) << 4
    seg = struct.pack(
        "!HHIIBBHHH",
        sport,
        dport,
        rnd.randrange(2**32),
        rnd.randrange(2**32),
        off,
        rnd.choice(TCP_FLAG_SETS),
        rnd.randrange(65536),
        0,
        rnd.choice((0, 0, 0, 1)),
    ) + opts + payload
    c = l4_checksum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp_seg(src, dst, sport, dport, rnd, payload=b""):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = l4_checksum(src, dst, 17, seg) or 0xFFFF
    if rnd.random() < 0.05:
        c = 0  # no checksum (allowed for UDP over IPv4)
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp_msg(rnd, kind, quote=b""):
    if kind == "echo":
        t, code = rnd.choice(((8, 0), (0, 0), (13, 0), (17, 0))), None
        body = struct.pack("!HH", rnd.randrange(65536), rnd.randrange(65536)) + bytes(
            rnd.randrange(256) for _ in range(rnd.randrange(0, 56))
        )
        t, code = t
    else:
        t, code = rnd.choice(((3, 0), (3, 1), (3, 3), (3, 4), (3, 13), (11, 0), (12, 0), (5, 1)))
        body = (struct.pack("!HH", 0, 1400) if (t, code) == (3, 4) else b"\0\0\0\0") + quote
    m = struct.pack("!BBH", t, code, 0) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def garbage_quote(rnd, src, dst):
    """An embedded 'original datagram': sometimes plausible, often garbage."""
    k = rnd.randrange(4)
    if k == 0:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
    proto = rnd.choice((6, 17, 1, 47))
    inner_l4 = struct.pack("!HHI", rnd.randrange(65536), rnd.randrange(65536), rnd.randrange(2**32))
    h = ip_header(src, dst, proto, len(inner_l4) + rnd.randrange(0, 1400), rnd)
    if k == 1:
        h = bytes(b ^ rnd.randrange(256) if rnd.random() < 0.1 else b for b in h)
    q = h + inner_l4
    if k == 3:
        q = q[: rnd.randrange(1, len(q))]
    return q


class Gen:
    def __init__(self, rnd, port_pool):
        self.rnd = rnd
        self.ports = port_pool

    def valid(self, src, dst, quote_src, quote_dst):
        """One well-formed IPv4 packet from src to dst (bytes), every checksum correct."""
        rnd = self.rnd
        kind = rnd.choices(("tcp", "udp", "echo", "error", "frag"), (35, 30, 12, 13, 10))[0]
        opts = ip_options(rnd) if rnd.random() < 0.08 else b""
        sport, dport = rnd.choice(self.ports), rnd.choice(self.ports)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.choice((0, 0, 1, 16, 100, 512))))
        if kind == "tcp":
            seg = tcp_seg(src, dst, sport, dport, rnd, payload)
            return ip_header(src, dst, 6, len(seg), rnd, opts) + seg
        if kind == "udp":
            seg = udp_seg(src, dst, sport, dport, rnd, payload)
            return ip_header(src, dst, 17, len(seg), rnd, opts) + seg
        if kind == "echo":
            m = icmp_msg(rnd, "echo")
            return ip_header(src, dst, 1, len(m), rnd, opts) + m
        if kind == "error":
            m = icmp_msg(rnd, "error", garbage_quote(rnd, quote_src, quote_dst))
            return ip_header(src, dst, 1, len(m), rnd, opts) + m
        # A fragment: the first (MF, offset 0) of a UDP/TCP datagram, or a later one.
        proto = rnd.choice((6, 17, 1))
        if rnd.random() < 0.5:
            seg = (
                udp_seg(src, dst, sport, dport, rnd, payload + b"x" * 64)
                if proto == 17
                else tcp_seg(src, dst, sport, dport, rnd, payload + b"x" * 64)
                if proto == 6
                else icmp_msg(rnd, "echo")
            )
            seg = seg[: max(8, (len(seg) // 2) & ~7)]
            return ip_header(src, dst, proto, len(seg), rnd, opts, frag=0x2000) + seg
        body = bytes(rnd.randrange(256) for _ in range(rnd.choice((8, 64, 256))))
        frag = (0x2000 if rnd.random() < 0.5 else 0) | rnd.randrange(1, 400)
        return ip_header(src, dst, proto, len(body), rnd, opts, frag=frag) + body

    def mutate(self, pkt):
        """A broken variant of a valid packet. Returns (bytes, how)."""
        rnd = self.rnd
        b = bytearray(pkt)
        ihl = (b[0] & 0x0F) * 4
        how = rnd.choices(
            ("truncate", "l4len", "l4csum", "flip", "ihl", "iplen", "ipcsum", "version", "garbage"),
            (20, 15, 15, 20, 8, 8, 5, 3, 6),
        )[0]
        if how == "truncate":
            n = rnd.randrange(20, max(21, len(b)))
            b = b[:n]
            struct.pack_into("!H", b, 2, len(b))
            if ihl > len(b):
                b[0] = 0x45
        elif how == "l4len" and len(b) >= ihl + 8:
            struct.pack_into("!H", b, ihl + 4, rnd.randrange(65536))
            if b[9] == 6 and len(b) > ihl + 12:
                b[ihl + 12] = rnd.randrange(256)  # data offset
        elif how == "l4csum" and len(b) >= ihl + 18:
            at = ihl + (16 if b[9] == 6 else 6 if b[9] == 17 else 2)
            struct.pack_into("!H", b, at, rnd.randrange(65536))
        elif how == "flip":
            for _ in range(rnd.randrange(1, 6)):
                i = rnd.randrange(12 if len(b) > 20 else 0, len(b))
                if 16 <= i < 20:
                    continue  # keep the destination: the class is sorted by destination
                b[i] ^= 1 << rnd.randrange(8)
        elif how == "ihl":
            b[0] = 0x40 | rnd.randrange(0, 16)
        elif how == "iplen":
            struct.pack_into("!H", b, 2, rnd.choice((0, 19, 20, len(b) + rnd.randrange(1, 200), 65535)))
        elif how == "version":
            b[0] = (rnd.choice((0, 5, 6, 15)) << 4) | (b[0] & 0x0F)
        elif how == "garbage":
            # Garbage IP options: a header length that covers random bytes.
            if len(b) >= 28:
                b[0] = 0x40 | rnd.randrange(6, min(15, len(b) // 4) + 1)
                for i in range(20, (b[0] & 0x0F) * 4):
                    b[i] = rnd.randrange(256)
        if how != "ipcsum" and rnd.random() < 0.9:
            b = bytearray(fix_ip_checksum(bytes(b)))
        else:
            struct.pack_into("!H", b, 10, rnd.randrange(65536))
            how = "ipcsum" if how == "ipcsum" else how + "+ipcsum"
        return bytes(b), how


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", i // 1000000, i % 1000000, len(fr), len(fr)))
            f.write(fr)


def main():
    (out, count, seed, in_src, in_dst, out_src, out_dst, inside_hosts, valid_dst, mutated_dst,
     nat, outside_srcs) = sys.argv[1:13]
    count = int(count)
    rnd = random.Random(int(seed))
    gen = Gen(rnd, [53, 80, 123, 443, 1024, 5000, 33434] + list(range(20000, 20400)))
    inside = [ip4(a) for a in inside_hosts.split(",")]
    outside = [ip4(a) for a in outside_srcs.split(",")]
    vdst, mdst, natb = ip4(valid_dst), ip4(mutated_dst), ip4(nat)
    eth_in = mac(in_dst) + mac(in_src) + b"\x08\x00"
    eth_out = mac(out_dst) + mac(out_src) + b"\x08\x00"
    stats = {"inside": {}, "outside": {}}

    def count_as(side, key):
        stats[side][key] = stats[side].get(key, 0) + 1

    for side in ("inside", "outside"):
        frames = []
        for _ in range(count):
            if side == "inside":
                src = rnd.choice(inside)
                pkt = gen.valid(src, vdst, vdst, src)
            else:
                src = rnd.choice(outside) if rnd.random() < 0.8 else bytes(rnd.randrange(1, 224) for _ in range(4))
                pkt = gen.valid(src, natb, natb, src)
            if rnd.random() < 0.5:
                if side == "inside":
                    pkt = pkt[:16] + mdst + pkt[20:]
                    pkt = fix_ip_checksum(pkt)
                pkt, how = gen.mutate(pkt)
                count_as(side, "mutated:" + how)
            else:
                count_as(side, "valid")
            frames.append((eth_in if side == "inside" else eth_out) + pkt)
        write_pcap("%s/%s.pcap" % (out, side), frames)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
