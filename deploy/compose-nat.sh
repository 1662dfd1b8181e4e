#!/bin/bash
# tunnat: entry point of the "nat" service in docker-compose.yml. Docker names a container's
# interfaces in an order of its own, so they are found by the addresses compose gives them; then
# the EC2 path (deploy/configure-network.sh, with the metadata given through the environment)
# writes the config and `tunnat run` starts in the foreground.
#   TUNNAT_INSIDE_ADDRESS   the nat container's address on the private network
#   TUNNAT_OUTSIDE_ADDRESS  its address on the internet network
#   TUNNAT_NAT_ADDRESS, TUNNAT_INSIDE   as for the daemon (comma separated)
set -euo pipefail

ifname_of() {
  local name
  name="$(ip -o -4 addr show to "$1/32" | awk '{print $2; exit}')"
  [ -n "$name" ] || {
    echo "tunnat-compose-nat: no interface has $1" >&2
    exit 1
  }
  printf '%s' "$name"
}

pkg="$(npm root --global)/tunnat"
TUNNAT_MD_INSIDE_INTERFACE="$(ifname_of "$TUNNAT_INSIDE_ADDRESS")"
TUNNAT_MD_OUTSIDE_INTERFACE="$(ifname_of "$TUNNAT_OUTSIDE_ADDRESS")"
export TUNNAT_MD_INSIDE_INTERFACE TUNNAT_MD_OUTSIDE_INTERFACE
export TUNNAT_MD_INTERFACE="$TUNNAT_MD_OUTSIDE_INTERFACE"
export TUNNAT_MD_NAT_ADDRESSES="$TUNNAT_NAT_ADDRESS"
export TUNNAT_MD_INSIDE_CIDRS="$TUNNAT_INSIDE"
export TUNNAT_CONFIG_FILE="${TUNNAT_CONFIG_FILE:-/etc/tunnat/tunnat.json}"
"$pkg/deploy/configure-network.sh"
exec tunnat run --config "$TUNNAT_CONFIG_FILE"
