#!/bin/bash
# CI check: docker-compose.yml is valid (`docker-compose config`, no Docker engine needed), also
# with its monitoring profile, and defines the services, networks and privileges the lab needs.
# The addresses are compared with the namespace lab by test/unit/artefacts/compose-lab.test.ts;
# test/artefacts/compose-run.sh runs the lab for real.
# Needs docker-compose (Debian 12: apt-get install docker-compose) or `docker compose`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  echo "compose: neither docker-compose nor docker compose is installed" >&2
  exit 1
fi

"${compose[@]}" -f docker-compose.yml config -q
"${compose[@]}" -f docker-compose.yml --profile monitoring config -q
services="$("${compose[@]}" -f docker-compose.yml --profile monitoring config --services | sort | xargs)"
[ "$services" = "grafana internet internet2 nat p1 p2 prometheus" ] || {
  echo "compose: services are '$services'" >&2
  exit 1
}
resolved="$("${compose[@]}" -f docker-compose.yml --profile monitoring config)"
for want in "NET_ADMIN" "/dev/net/tun:/dev/net/tun" "net.ipv4.ip_forward: '1'" \
  "net.ipv4.conf.default.rp_filter: '2'" "subnet: 10.0.1.0/24" "subnet: 203.0.113.0/24" \
  "driver: macvlan" "network_mode: service:nat"; do
  grep -qF -- "$want" <<<"$resolved" || {
    echo "compose: '$want' missing from the resolved file" >&2
    exit 1
  }
done
# The image the services run must be buildable from this tree: the Dockerfile's COPY sources
# exist and .dockerignore keeps what `npm pack` needs.
for f in Dockerfile .dockerignore deploy/compose-nat.sh package.json package-lock.json \
  binding.gyp native monitoring/prometheus.yml monitoring/alerts.yml \
  monitoring/grafana-dashboard.json monitoring/grafana/datasources.yml \
  monitoring/grafana/dashboards.yml; do
  [ -e "$f" ] || {
    echo "compose: $f missing" >&2
    exit 1
  }
done
for keep in src bin native binding.gyp deploy systemd package.json; do
  if grep -qxF "$keep" .dockerignore; then
    echo "compose: .dockerignore drops $keep, which the image build needs" >&2
    exit 1
  fi
done
echo "compose: docker-compose.yml is valid (services: $services)"
