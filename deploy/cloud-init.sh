#!/bin/bash
# tunnat: EC2 user-data (cloud-init runs it once, as root, at first boot). See docs/ec2.md.
#
# Installs Node.js (the official nodejs.org build of the newest release of NODE_MAJOR, checked
# against its SHASUMS256.txt), nftables and the compilers the native addon needs; installs
# tunnat from a release tarball (`npm pack` output) whose SHA-256 must match TUNNAT_TARBALL_SHA256
# (tunnat is not installed from the npm registry by name: the unscoped name is not ours);
# creates the tunnat user, installs the systemd unit and sysctl file, optionally attaches the
# NAT's own network interface (TUNNAT_ENI_ID, as the CDK construct sets it), writes
# /etc/tunnat/tunnat.json from the instance metadata (deploy/configure-network.sh) and starts
# the service.
#
# Settings (export them before the script in the user-data, or edit the defaults here):
TUNNAT_TARBALL_URL="${TUNNAT_TARBALL_URL:-}"       # https URL of tunnat-X.Y.Z.tgz (a release asset)
TUNNAT_TARBALL_SHA256="${TUNNAT_TARBALL_SHA256:-}" # its sha256sum, 64 hex digits (required)
TUNNAT_ENI_ID="${TUNNAT_ENI_ID:-}"                 # eni-… to attach as the NAT interface (optional)
NODE_MAJOR="${NODE_MAJOR:-24}"                     # the Node.js LTS line to install
NODE_DIST="${NODE_DIST:-https://nodejs.org/dist}"
TUNNAT_NODE_PREFIX="${TUNNAT_NODE_PREFIX:-/usr/local}" # where the Node.js tarball is unpacked
TUNNAT_IMDS_ENDPOINT="${TUNNAT_IMDS_ENDPOINT:-http://169.254.169.254}"
TUNNAT_INSTALL_LOG="${TUNNAT_INSTALL_LOG:-/var/log/tunnat-install.log}"
TUNNAT_PREFIX="${TUNNAT_PREFIX:-/usr}"             # npm --prefix: /usr/bin/tunnat, as the unit expects
TUNNAT_NETWORKD_DIR="${TUNNAT_NETWORKD_DIR:-/etc/systemd/network}"
TUNNAT_ATTACH_TRIES="${TUNNAT_ATTACH_TRIES:-60}"   # every 5 s: the old instance may still hold the ENI
# Steps, for tests that run parts of this script: packages node tunnat eni system (all by default).
TUNNAT_STEPS="${TUNNAT_STEPS:-packages node tunnat eni system}"
export TUNNAT_PRESET="${TUNNAT_PRESET:-aws}" # 350 s idle timeout + RST, ports 1024-65535
export TUNNAT_CHECK="${TUNNAT_CHECK:-warn}"
set -euo pipefail
exec > >(tee -a "$TUNNAT_INSTALL_LOG") 2>&1

log() { printf 'tunnat-install: %s\n' "$*"; }
die() {
  log "error: $*"
  exit 1
}
step() { [[ " $TUNNAT_STEPS " == *" $1 "* ]]; }

# Fetch $1 to $2, retrying (the network may come up a little after cloud-init starts).
fetch() { curl -fsSL --retry 5 --retry-delay 2 --connect-timeout 10 "$1" -o "$2"; }

# --- compilers for node-gyp, curl, xz, nftables ------------------------------------------
if step packages; then
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends ca-certificates curl xz-utils python3 make \
      g++ iproute2 nftables
  elif command -v dnf >/dev/null; then
    # AL2023 ships curl-minimal, which is enough: no curl package (it would conflict).
    dnf install -y -q tar xz python3 make gcc-c++ iproute nftables
  else
    die "unsupported distribution: need apt-get or dnf"
  fi
fi

# --- Node.js ------------------------------------------------------------------------------
if step node; then
  if ! node -e "process.exit(+process.versions.node.split('.')[0] >= $NODE_MAJOR ? 0 : 1)" \
    2>/dev/null; then
    case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) die "unsupported CPU $(uname -m)" ;;
    esac
    work="$(mktemp -d)"
    fetch "$NODE_DIST/latest-v$NODE_MAJOR.x/SHASUMS256.txt" "$work/SHASUMS256.txt" ||
      die "cannot download $NODE_DIST/latest-v$NODE_MAJOR.x/SHASUMS256.txt"
    tarball="$(awk -v a="linux-$arch.tar.xz" '$2 ~ a"$" {print $2}' "$work/SHASUMS256.txt")"
    [ -n "$tarball" ] || die "no linux-$arch build of Node.js $NODE_MAJOR in SHASUMS256.txt"
    fetch "$NODE_DIST/latest-v$NODE_MAJOR.x/$tarball" "$work/$tarball" ||
      die "cannot download $NODE_DIST/latest-v$NODE_MAJOR.x/$tarball"
    (cd "$work" && grep " $tarball\$" SHASUMS256.txt | sha256sum -c -) ||
      die "Node.js $tarball does not match its SHASUMS256.txt"
    mkdir -p "$TUNNAT_NODE_PREFIX"
    tar -xJf "$work/$tarball" -C "$TUNNAT_NODE_PREFIX" --strip-components=1 --no-same-owner
    rm -rf "$work"
    log "node $("$TUNNAT_NODE_PREFIX/bin/node" --version) installed from $tarball (SHA-256 checked)"
  else
    log "node $(node --version)"
  fi
fi

# --- tunnat: the release tarball, checked -------------------------------------------------
pkg="$(npm root --global --prefix "$TUNNAT_PREFIX" 2>/dev/null || true)/tunnat"
if step tunnat; then
  [ -n "$TUNNAT_TARBALL_URL" ] || die "TUNNAT_TARBALL_URL is not set (the tunnat-X.Y.Z.tgz URL)"
  [[ "$TUNNAT_TARBALL_SHA256" =~ ^[0-9a-f]{64}$ ]] ||
    die "TUNNAT_TARBALL_SHA256 must be the tarball's sha256sum (64 hex digits), got '$TUNNAT_TARBALL_SHA256'"
  work="$(mktemp -d)"
  fetch "$TUNNAT_TARBALL_URL" "$work/tunnat.tgz" || die "cannot download $TUNNAT_TARBALL_URL"
  got="$(sha256sum "$work/tunnat.tgz" | awk '{print $1}')"
  if [ "$got" != "$TUNNAT_TARBALL_SHA256" ]; then
    rm -rf "$work"
    die "tarball checksum mismatch: expected $TUNNAT_TARBALL_SHA256, got $got; not installed"
  fi
  log "tarball sha256 $got ok"
  # A local file: npm installs it without asking the registry about tunnat itself (its
  # dependencies come from the registry, pinned by the tarball's package.json ranges).
  npm install --global --no-audit --no-fund --prefix "$TUNNAT_PREFIX" "$work/tunnat.tgz"
  rm -rf "$work"
  pkg="$(npm root --global --prefix "$TUNNAT_PREFIX")/tunnat"
  log "$("$TUNNAT_PREFIX/bin/tunnat" --version)"
fi

# --- the NAT's own network interface (an ENI that outlives the instance) -------------------
imds_token=""
md() {
  [ -n "$imds_token" ] || imds_token="$(curl -fsS --max-time 5 --retry 3 -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$TUNNAT_IMDS_ENDPOINT/latest/api/token")"
  curl -fsS --max-time 5 --retry 3 -H "X-aws-ec2-metadata-token: $imds_token" \
    "$TUNNAT_IMDS_ENDPOINT/latest/meta-data/$1"
}
if step eni && [ -n "$TUNNAT_ENI_ID" ]; then
  instance="$(md instance-id)" || die "cannot read instance-id from IMDS ($TUNNAT_IMDS_ENDPOINT)"
  region="$(md placement/region)" || die "cannot read placement/region from IMDS"
  # The previous instance may still hold it while it terminates: retry (5 minutes by default).
  for i in $(seq 1 "$TUNNAT_ATTACH_TRIES"); do
    aws ec2 attach-network-interface --region "$region" --instance-id "$instance" \
      --network-interface-id "$TUNNAT_ENI_ID" --device-index 1 >/dev/null && break
    [ "$i" = "$TUNNAT_ATTACH_TRIES" ] && die "cannot attach $TUNNAT_ENI_ID to $instance"
    sleep 5
  done
  # The attachment shows in the metadata (macs/<mac>/interface-id) and as a new interface.
  eni_mac=""
  eni_if=""
  for i in $(seq 1 60); do
    for m in $(md network/interfaces/macs/ || true); do
      m="${m%/}"
      [ "$(md "network/interfaces/macs/$m/interface-id" || true)" = "$TUNNAT_ENI_ID" ] && eni_mac="$m"
    done
    if [ -n "$eni_mac" ]; then
      for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2>/dev/null)" = "$eni_mac" ] && eni_if="$(basename "$dev")"
      done
    fi
    [ -n "$eni_if" ] && break
    sleep 2
  done
  [ -n "$eni_if" ] || die "$TUNNAT_ENI_ID is attached but its interface did not appear"
  eni_ip="$(md "network/interfaces/macs/$eni_mac/local-ipv4s" | head -n1)"
  # amazon-ec2-net-utils (AL2023) writes /run/systemd/network/70-<if>.network and, by timer,
  # puts every secondary IP of the ENI on the interface: the NAT address included. A .network
  # file of our own in /etc/systemd/network, sorting first, takes the interface from it: DHCP
  # for the ENI's primary IP only, its routes in table 4243, and what leaves the TUN goes out
  # this ENI (its source/destination check is off; the primary ENI's is not).
  if [ -d "$TUNNAT_NETWORKD_DIR" ]; then
    cat >"$TUNNAT_NETWORKD_DIR/60-tunnat-nat.network" <<EOF
# tunnat: the NAT interface $TUNNAT_ENI_ID (deploy/cloud-init.sh). Keeps amazon-ec2-net-utils
# from adding the NAT address (a secondary IP) to it.
[Match]
MACAddress=$eni_mac

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
RouteTable=4243
UseDNS=no
UseHostname=no

[RoutingPolicyRule]
IncomingInterface=${TUNNAT_TUN:-tunnat0}
Table=4243
Priority=4243

[RoutingPolicyRule]
From=$eni_ip/32
Table=4243
Priority=4244
EOF
    if [ "$TUNNAT_NETWORKD_DIR" = /etc/systemd/network ] && command -v networkctl >/dev/null; then
      networkctl reload || true
      networkctl reconfigure "$eni_if" || true
    fi
  else
    log "warning: no systemd-networkd: route ${TUNNAT_TUN:-tunnat0}'s output via the NAT ENI yourself"
  fi
  export TUNNAT_MD_MAC="$eni_mac"
  log "NAT interface $TUNNAT_ENI_ID attached: $eni_if ($eni_mac, $eni_ip)"
fi

# --- user, unit, sysctl, config -----------------------------------------------------------
if step system; then
  [ -d "$pkg" ] || die "tunnat is not installed under $TUNNAT_PREFIX"
  install -D -m 0644 "$pkg/systemd/tunnat.sysusers" /usr/lib/sysusers.d/tunnat.conf
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /usr/lib/sysusers.d/tunnat.conf
  elif ! id tunnat >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tunnat
  fi
  install -D -m 0644 "$pkg/systemd/tunnat.service" /etc/systemd/system/tunnat.service

  TUNNAT_BIN="$TUNNAT_PREFIX/bin/tunnat" TUNNAT_SYSCTL_FILE=/etc/sysctl.d/60-tunnat.conf \
    TUNNAT_CONFIG_FILE=/etc/tunnat/tunnat.json "$pkg/deploy/configure-network.sh"

  systemctl daemon-reload
  systemctl enable --now tunnat.service
  sleep 2
  systemctl --no-pager --full status tunnat.service || true
  log "done: journalctl -u tunnat -o cat | jq . shows the daemon's log"
fi
