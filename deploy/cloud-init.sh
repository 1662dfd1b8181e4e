#!/bin/bash
# tunnat: EC2 user-data (cloud-init runs it once, as root, at first boot). See docs/ec2.md.
#
# Installs Node.js 20 (the official linux build, checksum verified) and the compilers the
# native addon needs, installs tunnat from the npm registry or from a tarball URL, creates the
# tunnat user, installs the systemd unit and sysctl file, writes /etc/tunnat/tunnat.json from
# the instance metadata (deploy/configure-network.sh) and starts the service.
#
# Settings (edit here, or export them before the script in the user-data):
TUNNAT_VERSION="${TUNNAT_VERSION:-latest}"      # npm version or dist-tag
TUNNAT_TARBALL_URL="${TUNNAT_TARBALL_URL:-}"    # e.g. an S3 presigned URL of `npm pack` output
NODE_MAJOR="${NODE_MAJOR:-20}"
NODE_DIST="${NODE_DIST:-https://nodejs.org/dist}"
export TUNNAT_PRESET="${TUNNAT_PRESET:-aws}"    # 350 s idle timeout + RST, like a NAT Gateway
export TUNNAT_CHECK="${TUNNAT_CHECK:-warn}"
set -euo pipefail
exec > >(tee -a /var/log/tunnat-install.log) 2>&1

log() { printf 'tunnat-install: %s\n' "$*"; }

# --- compilers for node-gyp, curl, xz -----------------------------------------------------
if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends ca-certificates curl xz-utils python3 make g++ \
    iproute2 nftables
elif command -v dnf >/dev/null; then
  dnf install -y -q tar xz python3 make gcc-c++ iproute nftables
else
  log "unsupported distribution: need apt-get or dnf"
  exit 1
fi

# --- Node.js ------------------------------------------------------------------------------
if ! node -e "process.exit(+process.versions.node.split('.')[0] >= $NODE_MAJOR ? 0 : 1)" \
  2>/dev/null; then
  case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *)
    log "unsupported CPU $(uname -m)"
    exit 1
    ;;
  esac
  work="$(mktemp -d)"
  curl -fsSL "$NODE_DIST/latest-v$NODE_MAJOR.x/SHASUMS256.txt" -o "$work/SHASUMS256.txt"
  tarball="$(awk -v a="linux-$arch.tar.xz" '$2 ~ a"$" {print $2}' "$work/SHASUMS256.txt")"
  curl -fsSL "$NODE_DIST/latest-v$NODE_MAJOR.x/$tarball" -o "$work/$tarball"
  (cd "$work" && grep " $tarball\$" SHASUMS256.txt | sha256sum -c -)
  tar -xJf "$work/$tarball" -C /usr/local --strip-components=1 --no-same-owner
  rm -rf "$work"
fi
log "node $(node --version)"

# --- tunnat -------------------------------------------------------------------------------
# --prefix /usr puts the command at /usr/bin/tunnat, where tunnat.service expects it.
if [ -n "$TUNNAT_TARBALL_URL" ]; then
  curl -fsSL "$TUNNAT_TARBALL_URL" -o /tmp/tunnat.tgz
  npm install --global --prefix /usr /tmp/tunnat.tgz
  rm -f /tmp/tunnat.tgz
else
  npm install --global --prefix /usr "tunnat@$TUNNAT_VERSION"
fi
pkg="$(npm root --global --prefix /usr)/tunnat"
log "$(/usr/bin/tunnat --version)"

# --- user, unit, sysctl, config -----------------------------------------------------------
install -D -m 0644 "$pkg/systemd/tunnat.sysusers" /usr/lib/sysusers.d/tunnat.conf
if command -v systemd-sysusers >/dev/null; then
  systemd-sysusers /usr/lib/sysusers.d/tunnat.conf
elif ! id tunnat >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tunnat
fi
install -D -m 0644 "$pkg/systemd/tunnat.service" /etc/systemd/system/tunnat.service

TUNNAT_BIN=/usr/bin/tunnat TUNNAT_SYSCTL_FILE=/etc/sysctl.d/60-tunnat.conf \
  TUNNAT_CONFIG_FILE=/etc/tunnat/tunnat.json "$pkg/deploy/configure-network.sh"

systemctl daemon-reload
systemctl enable --now tunnat.service
sleep 2
systemctl --no-pager --full status tunnat.service || true
log "done: journalctl -u tunnat -o cat | jq . shows the daemon's log"
