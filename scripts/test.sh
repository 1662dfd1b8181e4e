#!/usr/bin/env bash
# The README's second command: install what the tests need, build, and run the unit and netns
# (network-namespace) suites. Ends with the line "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh iproute2 iputils-ping iperf3 nftables socat curl tcpdump tshark \
  python3-scapy hping3 traceroute prometheus coturn stun-client ethtool python3 make g++ procps \
  nmap tcpreplay keepalived iputils-arping
npm run build --silent
exec node test/run.js unit netns
