#!/usr/bin/env bash
# Installs the Debian packages the lab and the tests use, if any is missing (root, Debian 12),
# then the npm dependencies (which build the TUN addon). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
want="$*"
[ -n "$want" ] || want="iproute2 nftables iputils-ping iputils-arping keepalived iperf3 curl python3 make g++"
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
fi
