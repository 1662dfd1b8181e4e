#!/usr/bin/env bash
# The README's first command: bring up the namespace lab (two private hosts, the NAT host, an
# internet host), run tunnat in the NAT namespace, send ping, HTTP and iperf3 traffic through it,
# print what crossed and the daemon's key metrics, and tear everything down (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
npm run build --silent
exec node bin/tunnat.js lab demo
