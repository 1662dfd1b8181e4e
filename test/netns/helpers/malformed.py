#!/usr/bin/env python3
"""Send a burst of malformed and odd IPv4 packets from a private host towards the internet host.

Run inside the private host's namespace (p1) by test/netns/integration.test.ts. The frames are
built at layer 2 (sendp) so that the sending kernel does not repair the IP header (a raw IP
socket with IP_HDRINCL rewrites tot_len and the header checksum: net/ipv4/raw.c
raw_send_hdrinc). Every kind has its own destination port (or ICMP id) so a capture on the
internet host can tell which kinds crossed the NAT.

Only kinds the NAT host's kernel forwards are useful: ip_rcv_core() drops a bad IP header
checksum, a bad IHL and a tot_len longer than the frame, and ip_forward() never looks at L4.
So the burst is made of what does reach tunnat: broken TCP/UDP/ICMP headers and checksums,
well-formed but unusual IP options, an unknown protocol, a lone non-first fragment.

Prints one JSON object: {"sent": {kind: count}, "ports": {kind: port}}.
"""

import argparse
import json
import sys

from scapy.all import ICMP, IP, TCP, UDP, Ether, IPOption, Raw, conf, sendp  # noqa: E402

conf.verb = 0


def build(src: str, dst: str):
    """(kind, port, packet-without-ether, expected) for each malformed kind."""
    kinds = []

    def add(kind, port, pkt):
        kinds.append((kind, port, pkt))

    # TCP data offset below 5 words (RFC 9293 §3.1: at least 5): the header cannot be parsed.
    add("tcp_doff_short", 41001, IP(src=src, dst=dst) / TCP(sport=41001, dport=41001, dataofs=2, flags="S"))
    # TCP data offset beyond the segment: claims 60 header bytes, has 20.
    add("tcp_doff_long", 41002, IP(src=src, dst=dst) / TCP(sport=41002, dport=41002, dataofs=15, flags="S"))
    # TCP header cut to 10 bytes (ports and part of the sequence number).
    add("tcp_truncated", 41003, IP(src=src, dst=dst, proto=6) / Raw(bytes(TCP(sport=41003, dport=41003))[:10]))
    # UDP length larger than the IP payload.
    add("udp_len_long", 41004, IP(src=src, dst=dst) / UDP(sport=41004, dport=41004, len=400) / Raw(b"x" * 8))
    # UDP length below the 8-byte header.
    add("udp_len_short", 41005, IP(src=src, dst=dst) / UDP(sport=41005, dport=41005, len=4) / Raw(b"x" * 8))
    # UDP header cut to 4 bytes.
    add("udp_truncated", 41006, IP(src=src, dst=dst, proto=17) / Raw(bytes(UDP(sport=41006, dport=41006))[:4]))
    # ICMP echo with a wrong checksum (RFC 5508 REQ-3: SHOULD drop).
    add("icmp_bad_checksum", 41007, IP(src=src, dst=dst) / ICMP(type=8, id=41007, seq=1, chksum=0x1234) / Raw(b"ping"))
    # ICMP header cut to 3 bytes.
    add("icmp_truncated", 41008, IP(src=src, dst=dst, proto=1) / Raw(b"\x08\x00\x00"))
    # ICMP destination unreachable whose "embedded packet" is junk (not an IPv4 header).
    add("icmp_error_junk", 41009, IP(src=src, dst=dst) / ICMP(type=3, code=3) / Raw(b"\xde\xad\xbe\xef" * 3))
    # ICMP time exceeded embedding a packet no flow knows, with a bad embedded IP checksum.
    emb = bytearray(bytes(IP(src=dst, dst=src, ttl=1) / UDP(sport=41010, dport=41010)))
    emb[10] ^= 0xFF
    add("icmp_error_bad_embedded", 41010, IP(src=src, dst=dst) / ICMP(type=11, code=0) / Raw(bytes(emb)))
    # An unknown IP protocol (253: RFC 3692 experimentation).
    add("unknown_protocol", 41011, IP(src=src, dst=dst, proto=253) / Raw(b"experimental"))
    # A non-first fragment with no first fragment before it.
    add("fragment_no_state", 41012, IP(src=src, dst=dst, proto=17, flags=0, frag=100, id=41012) / Raw(b"y" * 64))
    # TCP with a wrong checksum: well-formed, the NAT need not verify it (the server drops it).
    add("tcp_bad_checksum", 41013, IP(src=src, dst=dst) / TCP(sport=41013, dport=41013, flags="S", chksum=0xBEEF))
    # UDP with a wrong checksum: the same.
    add("udp_bad_checksum", 41014, IP(src=src, dst=dst) / UDP(sport=41014, dport=41014, chksum=0xBEEF) / Raw(b"z" * 8))
    # Well-formed but unusual IP options: record route (forwarded by the kernel) and NOPs, and an
    # unknown option type 0x9e with a valid length (ip_options_compile lets unknown types pass).
    add("ip_option_rr", 41015, IP(src=src, dst=dst, options=[IPOption(b"\x07\x07\x04" + b"\x00" * 4), IPOption(b"\x01")]) / UDP(sport=41015, dport=41015) / Raw(b"rr"))
    add("ip_option_unknown", 41016, IP(src=src, dst=dst, options=[IPOption(b"\x9e\x04\x00\x00")]) / UDP(sport=41016, dport=41016) / Raw(b"op"))
    # TCP with odd TCP options: an unknown kind and a zero-length option after NOPs.
    add("tcp_odd_options", 41017, IP(src=src, dst=dst) / TCP(sport=41017, dport=41017, flags="S", options=[("NOP", None), (253, b"\x00\x00"), ("NOP", None)]))
    # TCP with no SYN (a stray ACK): cannot open a flow.
    add("tcp_no_flow", 41018, IP(src=src, dst=dst) / TCP(sport=41018, dport=41018, flags="A", seq=1, ack=1))
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--gw-mac", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    a.rounds = max(1, min(a.rounds, 100))  # bounded
    kinds = build(a.src, a.dst)
    frames = []
    for _ in range(a.rounds):
        for _kind, _port, pkt in kinds:
            frames.append(Ether(dst=a.gw_mac) / pkt)
    sendp(frames, iface=a.iface, inter=0.001)
    json.dump(
        {
            "sent": {k: a.rounds for k, _p, _x in kinds},
            "ports": {k: p for k, p, _x in kinds},
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
