#!/bin/bash
# tunnat: the network part of the EC2 set-up (docs/ec2.md), run by deploy/cloud-init.sh and
# by the netns test (test/netns/ec2-instance.test.ts), which plays the instance in a network namespace.
#
#  1. installs the sysctl.d file (ip_forward, rp_filter) and applies it now;
#  2. reads the instance metadata (IMDSv2): the ENI's MAC -> interface, the secondary private
#     IPs that have an Elastic IP associated -> NAT addresses, the VPC CIDR blocks without the
#     instance's own subnet -> inside;
#  3. makes sure the host does not own the NAT addresses (dedicated mode: they are routed into
#     the TUN; Amazon Linux's ec2-net-utils would otherwise put secondary IPs on the interface);
#  4. writes /etc/tunnat/tunnat.json;
#  5. runs `tunnat check` on it and shows its report.
#
# Every metadata value can be given instead through the environment (then IMDS is not asked):
#   TUNNAT_MD_MAC              MAC address of the ENI                     (meta-data/mac)
#   TUNNAT_MD_INTERFACE        interface of that ENI                      (the link with that MAC)
#   TUNNAT_MD_INSIDE_INTERFACE interface the private subnets' traffic arrives on (default: the ENI)
#   TUNNAT_MD_OUTSIDE_INTERFACE interface towards the internet gateway    (default: the ENI)
#   TUNNAT_MD_NAT_ADDRESSES    NAT addresses, space or comma separated    (EIP-associated
#                              secondary private IPs of the ENI)
#   TUNNAT_MD_INSIDE_CIDRS     inside prefixes, space or comma separated  (vpc-ipv4-cidr-blocks
#                              minus the instance's subnet-ipv4-cidr-block)
# Other settings:
#   TUNNAT_IMDS_ENDPOINT  default http://169.254.169.254
#   TUNNAT_CONFIG_FILE    default /etc/tunnat/tunnat.json
#   TUNNAT_SYSCTL_FILE    default /etc/sysctl.d/60-tunnat.conf
#   TUNNAT_TUN            default tunnat0
#   TUNNAT_METRICS        default 127.0.0.1:9469
#   TUNNAT_PRESET         default aws (350 s idle timeout and RST, like a NAT Gateway), or default
#   TUNNAT_BIN            default tunnat (the command run for `check`)
#   TUNNAT_CHECK          warn (default: report, exit 0) | strict (exit with check's status) | skip
#   TUNNAT_KEEP_NAT_ADDRESS=1  leave a NAT address configured on the host (only warn)
# (TUNNAT_TUN, TUNNAT_METRICS and TUNNAT_PRESET mean what they mean to the daemon.)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
imds="${TUNNAT_IMDS_ENDPOINT:-http://169.254.169.254}"
config_file="${TUNNAT_CONFIG_FILE:-/etc/tunnat/tunnat.json}"
sysctl_file="${TUNNAT_SYSCTL_FILE:-/etc/sysctl.d/60-tunnat.conf}"
sysctl_src="${TUNNAT_SYSCTL_SOURCE:-$here/../systemd/tunnat.sysctl}"
tun="${TUNNAT_TUN:-tunnat0}"
metrics="${TUNNAT_METRICS:-127.0.0.1:9469}"
preset="${TUNNAT_PRESET:-aws}"
tunnat_bin="${TUNNAT_BIN:-tunnat}"
check_mode="${TUNNAT_CHECK:-warn}"

log() { printf 'tunnat-configure: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- IMDSv2 -------------------------------------------------------------------------------
imds_token=""
imds_login() {
  # IMDSv2: a session token from a PUT first (instances may have IMDSv1 disabled).
  imds_token="$(curl -fsS --max-time 5 --retry 3 -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/latest/api/token")" ||
    die "no IMDSv2 token from $imds (not on EC2? set the TUNNAT_MD_* variables)"
}
md() {
  curl -fsS --max-time 5 --retry 3 -H "X-aws-ec2-metadata-token: $imds_token" \
    "$imds/latest/meta-data/$1"
}

words() { tr ',\n' '  ' <<<"$1" | xargs; }

valid_ipv4() {
  local IFS=. a b c d
  [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
  read -r a b c d <<<"$1"
  ((a <= 255 && b <= 255 && c <= 255 && d <= 255))
}
valid_cidr() {
  [[ "$1" =~ ^([0-9.]+)/([0-9]{1,2})$ ]] && valid_ipv4 "${BASH_REMATCH[1]}" &&
    ((BASH_REMATCH[2] <= 32))
}
valid_ifname() { [[ "$1" =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]]; }

# --- 1. sysctls ---------------------------------------------------------------------------
apply_sysctl_file() {
  # Like systemd-sysctl: "key = value", "-key" ignores a missing key (the TUN before it exists).
  local line key value optional path
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    [[ "$line" =~ ^[[:space:]]*(-?)([A-Za-z0-9_.]+)[[:space:]]*=[[:space:]]*([^[:space:]]+) ]] ||
      continue
    optional="${BASH_REMATCH[1]}"
    key="${BASH_REMATCH[2]}"
    value="${BASH_REMATCH[3]}"
    path="/proc/sys/${key//.//}"
    if [ ! -e "$path" ]; then
      [ -n "$optional" ] && continue
      die "sysctl $key does not exist"
    fi
    # Unchanged values are not written: a container's /proc/sys is read-only (compose sets them).
    [ "$(cat "$path")" = "$value" ] && continue
    printf '%s\n' "$value" >"$path" || die "cannot set sysctl $key = $value"
    log "sysctl $key = $value"
  done <"$1"
}

[ -r "$sysctl_src" ] || die "missing $sysctl_src"
mkdir -p "$(dirname "$sysctl_file")"
sed "s/\.tunnat0\./.$tun./g" "$sysctl_src" >"$sysctl_file"
apply_sysctl_file "$sysctl_file"

# --- 2. metadata --------------------------------------------------------------------------
mac="${TUNNAT_MD_MAC:-}"
need_mac=""
[ -z "${TUNNAT_MD_INTERFACE:-}" ] && need_mac=1
[ -z "${TUNNAT_MD_NAT_ADDRESSES:-}" ] && need_mac=1
[ -z "${TUNNAT_MD_INSIDE_CIDRS:-}" ] && need_mac=1
if [ -n "$need_mac" ]; then
  imds_login
  [ -n "$mac" ] || mac="$(md mac)" || die "cannot read the MAC from IMDS"
fi
mac="$(tr 'A-F' 'a-f' <<<"$mac")"

iface="${TUNNAT_MD_INTERFACE:-}"
if [ -z "$iface" ]; then
  for dev in /sys/class/net/*; do
    if [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ]; then
      iface="$(basename "$dev")"
      break
    fi
  done
  [ -n "$iface" ] || die "no interface has the ENI's MAC $mac"
fi
inside_if="${TUNNAT_MD_INSIDE_INTERFACE:-$iface}"
outside_if="${TUNNAT_MD_OUTSIDE_INTERFACE:-$iface}"

nat_addresses="$(words "${TUNNAT_MD_NAT_ADDRESSES:-}")"
if [ -z "$nat_addresses" ]; then
  # Secondary private IPs with an Elastic IP: ipv4-associations/<public-ip> -> private IP.
  # The primary private IP is skipped even when it has a public IP: the host owns it.
  primary="$(md "network/interfaces/macs/$mac/local-ipv4s" | head -n1)"
  for public in $(md "network/interfaces/macs/$mac/ipv4-associations/" || true); do
    public="${public%/}"
    private="$(md "network/interfaces/macs/$mac/ipv4-associations/$public")"
    if [ "$private" != "$primary" ]; then
      nat_addresses="${nat_addresses:+$nat_addresses }$private"
      log "NAT address $private (Elastic IP $public)"
    fi
  done
  [ -n "$nat_addresses" ] ||
    die "no secondary private IP of $mac has an Elastic IP (docs/ec2.md, step 2)"
fi

inside_cidrs="$(words "${TUNNAT_MD_INSIDE_CIDRS:-}")"
if [ -z "$inside_cidrs" ]; then
  # The VPC without the instance's own subnet: the NAT address lies in that subnet, and an
  # inside prefix may not contain it (RFC 4787 REQ-7; tunnat refuses such a config).
  vpc="$(words "$(md "network/interfaces/macs/$mac/vpc-ipv4-cidr-blocks")")"
  subnet="$(md "network/interfaces/macs/$mac/subnet-ipv4-cidr-block")"
  # shellcheck source=deploy/cidr-subtract.sh
  . "$here/cidr-subtract.sh"
  inside_cidrs="$(cidr_subtract "$vpc" "$subnet")"
  log "inside: VPC $vpc without the instance's subnet $subnet"
fi

for a in $nat_addresses; do valid_ipv4 "$a" || die "bad NAT address '$a'"; done
for c in $inside_cidrs; do valid_cidr "$c" || die "bad inside prefix '$c'"; done
[ -n "$inside_cidrs" ] || die "no inside prefix"
for i in "$inside_if" "$outside_if" "$tun"; do
  valid_ifname "$i" || die "bad interface name '$i'"
  [ "$i" = "$tun" ] || [ -e "/sys/class/net/$i" ] || die "no interface $i"
done

# --- 3. the host must not own the NAT addresses --------------------------------------------
for a in $nat_addresses; do
  owner="$(ip -o -4 addr show to "$a/32" | awk '{print $2; exit}')"
  [ -n "$owner" ] || continue
  if [ "${TUNNAT_KEEP_NAT_ADDRESS:-}" = 1 ]; then
    log "warning: $a is configured on $owner; tunnat routes it into $tun instead"
    continue
  fi
  prefix="$(ip -o -4 addr show dev "$owner" to "$a/32" | awk '{print $4; exit}')"
  ip addr del "$prefix" dev "$owner"
  log "removed $prefix from $owner: the NAT address is routed into $tun, not owned by the host"
done

# --- 4. configuration file ----------------------------------------------------------------
json_list() {
  local out="" x
  for x in "$@"; do out="${out:+$out, }\"$x\""; done
  printf '[%s]' "$out"
}
# shellcheck disable=SC2086 # word splitting of the address lists is intended
nat_json="$(json_list $nat_addresses)"
# shellcheck disable=SC2086
inside_json="$(json_list $inside_cidrs)"
mkdir -p "$(dirname "$config_file")"
tmp="$(mktemp "$config_file.XXXXXX")"
{
  printf '{\n'
  printf '  "inside": %s,\n' "$inside_json"
  printf '  "insideInterface": "%s",\n' "$inside_if"
  printf '  "natAddress": %s,\n' "$nat_json"
  printf '  "outsideInterface": "%s",\n' "$outside_if"
  printf '  "tun": "%s",\n' "$tun"
  printf '  "preset": "%s",\n' "$preset"
  printf '  "metrics": "%s",\n' "$metrics"
  # The unit's StateDirectory: `tunnat down` and `tunnat check` from a shell find the same files.
  printf '  "stateFile": "/var/lib/tunnat/plumbing.json"\n'
  printf '}\n'
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$config_file"
log "wrote $config_file: inside $inside_cidrs on $inside_if, NAT $nat_addresses on $outside_if"

# --- 5. tunnat check ----------------------------------------------------------------------
[ "$check_mode" = skip ] && exit 0
status=0
"$tunnat_bin" check --config "$config_file" || status=$?
if [ "$status" -ne 0 ]; then
  log "tunnat check exited with $status"
  [ "$check_mode" = strict ] && exit "$status"
fi
exit 0
