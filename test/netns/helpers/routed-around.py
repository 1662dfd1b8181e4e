#!/usr/bin/env python3
"""An outsider that reaches a private host by a route around the NAT and tries to complete a TCP
handshake with it through the NAT address (issue 8, item 1).

Run in the internet host's namespace by test/netns/faults.test.ts, which has routed the inside
prefix via the NAT host's outside address and made the kernel drop its own RSTs (an attacker
suppresses them so that the unexpected SYN-ACK does not reset the attempt). Steps:

1. send a SYN straight to the private host (it crosses the NAT host's forwarding, not tunnat);
2. wait for the private host's SYN-ACK; it can only come back through tunnat, from the NAT address
   if tunnat made a flow for it;
3. if it came, ACK it to the NAT address and port it came from and wait for the service's banner.

Prints one JSON object: {"synack_from": "addr:port" or null, "banner": text or null}.
Bounded: at most 3 s for the SYN-ACK and 3 s for the banner.
"""

import argparse
import json
import random
import sys
import time

from scapy.all import IP, TCP, AsyncSniffer, Raw, conf, send  # noqa: E402

conf.verb = 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True, help="the private host")
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--sport", type=int, default=0)
    args = ap.parse_args()
    sport = args.sport or random.randint(20000, 60000)
    isn = random.randint(0, 2**32 - 1)

    def ours(p) -> bool:
        return IP in p and TCP in p and p[IP].dst == args.src and p[TCP].dport == sport

    seen = []
    sniff = AsyncSniffer(iface=args.iface, lfilter=ours, prn=seen.append, store=False)
    sniff.start()
    time.sleep(0.3)  # the sniffer's socket is open before anything is sent
    send(IP(src=args.src, dst=args.dst) / TCP(sport=sport, dport=args.dport, flags="S", seq=isn))
    synack = None
    for _ in range(30):
        time.sleep(0.1)
        for p in list(seen):
            if (p[TCP].flags & 0x12) == 0x12:
                synack = p
                break
        if synack is not None:
            break
    result = {"synack_from": None, "banner": None}
    if synack is not None:
        peer, pport = synack[IP].src, synack[TCP].sport
        result["synack_from"] = f"{peer}:{pport}"
        send(
            IP(src=args.src, dst=peer)
            / TCP(sport=sport, dport=pport, flags="A", seq=isn + 1, ack=synack[TCP].seq + 1)
        )
        for _ in range(30):
            time.sleep(0.1)
            data = [p for p in list(seen) if Raw in p and len(p[Raw].load) > 0]
            if data:
                result["banner"] = data[0][Raw].load.decode("utf-8", "replace")
                break
    sniff.stop()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
