"""Probes of the security netns test (test/netns/security.test.ts), one per subcommand. Each prints
one JSON line and exits 0; every address comes from the command line (the test's lab), and each
run is bounded in time.

  udp-hold BIND_IP BIND_PORT SERVER_IP SERVER_PORT SECONDS
      (inside host) bind BIND_IP:BIND_PORT, send "hello" to the server three times, then record
      every datagram received for SECONDS: {"got": [[payload, src_ip, src_port], ...]}
  udp-outsider SERVER_IP SERVER_PORT OTHER_IP OTHER_PORT SECONDS
      (internet host) bind SERVER_IP:SERVER_PORT, wait for the inside host's hello, learn its
      outside endpoint (the mapping), then send one tagged datagram to it from each of
      SERVER_IP:SERVER_PORT, SERVER_IP:OTHER_PORT, OTHER_IP:SERVER_PORT, OTHER_IP:OTHER_PORT:
      {"mapping": [ip, port], "sent": [tags]}
  spoof SRC SPORT DST DPORT COUNT
      (inside host, scapy) send COUNT UDP datagrams "SPOOFED-PACKET" (UDP length 22) with a forged
      source SRC:SPORT.
  udp-echo IP PORT SECONDS
      (internet host) answer every datagram with "<payload> from <ip>:<port>" for SECONDS.
  synack-attack SRC DST DPORT SECONDS
      (a neighbour that routes the inside prefix via the NAT host, scapy) the attack of issue 8
      item 1: SYN from SRC to DST:DPORT; whatever SYN-ACK comes back (from DST or from a NAT
      address), answer it with the ACK that completes the handshake, then wait for the server's
      banner. The caller drops the kernel's own RSTs. {"synack": [src, sport] | null,
      "banner": "..."}
"""

import json
import random
import socket
import sys
import time


def udp_hold(bind_ip, bind_port, server_ip, server_port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind_ip, int(bind_port)))
    for _ in range(3):
        s.sendto(b"hello", (server_ip, int(server_port)))
        time.sleep(0.05)
    got = []
    end = time.time() + float(seconds)
    while True:
        left = end - time.time()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, (ip, port) = s.recvfrom(2048)
        except socket.timeout:
            break
        got.append([data.decode("ascii", "replace"), ip, port])
    print(json.dumps({"got": got}))


def udp_outsider(server_ip, server_port, other_ip, other_port, seconds):
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    main.bind((server_ip, int(server_port)))
    main.settimeout(float(seconds))
    try:
        _, peer = main.recvfrom(2048)
    except socket.timeout:
        print(json.dumps({"mapping": None, "sent": []}))
        return
    sent = []
    for ip, port in [
        (server_ip, server_port),
        (server_ip, other_port),
        (other_ip, server_port),
        (other_ip, other_port),
    ]:
        tag = "from %s:%s" % (ip, port)
        if (ip, port) == (server_ip, server_port):
            main.sendto(tag.encode(), peer)
        else:
            o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            o.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            o.bind((ip, int(port)))
            o.sendto(tag.encode(), peer)
            o.close()
        sent.append(tag)
        time.sleep(0.05)
    print(json.dumps({"mapping": list(peer), "sent": sent}))


def udp_echo(ip, port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port)))
    n = 0
    end = time.time() + float(seconds)
    while True:
        left = end - time.time()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            break
        n += 1
        s.sendto(data + (" from %s:%d" % peer).encode(), peer)
    print(json.dumps({"answered": n}))


def spoof(src, sport, dst, dport, count):
    from scapy.all import IP, UDP, Raw, conf, send

    conf.verb = 0
    pkt = IP(src=src, dst=dst) / UDP(sport=int(sport), dport=int(dport)) / Raw(b"SPOOFED-PACKET")
    send(pkt, count=int(count), inter=0.02)
    print(json.dumps({"sent": int(count)}))


def synack_attack(src, dst, dport, seconds):
    from scapy.all import IP, TCP, AsyncSniffer, Raw, conf, send

    conf.verb = 0
    sport = random.randint(20000, 30000)
    seq = random.randint(0, 2**31)
    seen = []
    sniffer = AsyncSniffer(
        iface="eth0",
        filter="tcp and dst host %s and dst port %d" % (src, sport),
        prn=seen.append,
        store=False,
    )
    sniffer.start()
    time.sleep(0.5)
    send(IP(src=src, dst=dst) / TCP(sport=sport, dport=int(dport), flags="S", seq=seq))
    synack = None
    banner = b""
    end = time.time() + float(seconds)
    while time.time() < end and not banner:
        time.sleep(0.1)
        for p in list(seen):
            if TCP not in p:
                continue
            if synack is None and int(p[TCP].flags) & 0x12 == 0x12:
                # Complete the handshake towards whoever answered (the NAT address, if the
                # gateway translated the private host's SYN-ACK), then wait for the banner.
                synack = [p[IP].src, p[TCP].sport]
                ack = p[TCP].seq + 1
                send(IP(src=src, dst=p[IP].src) / TCP(sport=sport, dport=p[TCP].sport, flags="A", seq=seq + 1, ack=ack))
            # Raw only: an Ethernet frame's Padding is no banner.
            if Raw in p:
                banner = bytes(p[Raw].load)
    sniffer.stop()
    print(json.dumps({"synack": synack, "banner": banner.decode("ascii", "replace")}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "udp-hold": udp_hold,
        "udp-outsider": udp_outsider,
        "udp-echo": udp_echo,
        "spoof": spoof,
        "synack-attack": synack_attack,
    }[cmd](*args)


if __name__ == "__main__":
    main()
