#!/bin/bash
# tunnat: prefixes of A (the VPC's CIDR blocks) minus B (the NAT instance's own subnet), e.g.
#   cidr-subtract.sh 10.0.0.0/16 -- 10.0.0.0/24   ->  10.0.1.0/24 10.0.2.0/23 ... 10.0.128.0/17
# The inside prefixes must not contain the NAT address (RFC 4787 REQ-7, checked by tunnat), and
# on EC2 the NAT address is a private IP of the instance's subnet: so "inside" is the VPC
# without that subnet. Sourced by configure-network.sh (cidr_subtract), or run as a command.

ip2int() {
  local IFS=. a b c d
  read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }

# cidr_minus NET LEN BNET BLEN: print NET/LEN minus BNET/BLEN, one prefix a line.
cidr_minus() {
  local net=$1 len=$2 bnet=$3 blen=$4
  local amask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  local bmask=$(((0xffffffff << (32 - blen)) & 0xffffffff))
  if ((blen <= len)); then
    # B is as large as A or larger: it covers A or misses it.
    (((net & bmask) == bnet)) || echo "$(int2ip "$net")/$len"
    return
  fi
  if (((bnet & amask) != net)); then
    echo "$(int2ip "$net")/$len"
    return
  fi
  local half=$((1 << (31 - len)))
  cidr_minus "$net" $((len + 1)) "$bnet" "$blen"
  cidr_minus $((net + half)) $((len + 1)) "$bnet" "$blen"
}

# cidr_subtract "A1 A2 ..." "B1 B2 ...": every A minus every B, space separated.
cidr_subtract() {
  local current="$1" b a next
  for b in $2; do
    next=""
    for a in $current; do
      local an al bn bl
      an=$(ip2int "${a%/*}")
      al=${a#*/}
      bn=$(ip2int "${b%/*}")
      bl=${b#*/}
      an=$((an & ((0xffffffff << (32 - al)) & 0xffffffff)))
      bn=$((bn & ((0xffffffff << (32 - bl)) & 0xffffffff)))
      next="$next $(cidr_minus "$an" "$al" "$bn" "$bl" | xargs)"
    done
    current="$next"
  done
  # shellcheck disable=SC2086 # word splitting joins the prefixes with single spaces
  echo $current
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  a=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    a+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  cidr_subtract "${a[*]}" "$*"
fi
