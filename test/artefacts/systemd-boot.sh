#!/bin/bash
# CI check: systemd/tunnat.service under a real systemd. Boots Debian 12 (systemd 252) with
# `systemd-nspawn -b` inside a network namespace this script makes, installs tunnat the way
# docs/ec2.md says (the `npm pack` tarball installed globally under /usr, the unit, sysusers and
# sysctl files, /etc/tunnat/tunnat.json) and checks, against that systemd:
#   start (Type=notify: READY=1 and STATUS=) with /dev/net/tun 0600 root -> ping and TCP from a
#   private namespace to an internet namespace, the server sees the NAT address; the control
#   socket is usable by group tunnat and by nobody else; journal priorities (`-p warning` shows
#   warnings, not info); `systemctl reload` applies new timeouts; a crash (SIGKILL) and a stalled
#   daemon (SIGSTOP: the watchdog) are restarted and traffic crosses again; `systemctl stop`
#   removes the plumbing (PLUMBING_CHECKS below).
#
#   tsb-<pid>-p1              tsb-<pid>-c (the machine's netns)         tsb-<pid>-inet
#   eth0 10.0.1.2/24 ──veth── in0 10.0.1.1/24   out0 203.0.113.2/24 ──veth── eth0 203.0.113.10/24
#   default via 10.0.1.1      tunnat0, NAT address 203.0.113.1           (no route to 10.0.1.0/24)
#
# Addresses come from lab/lab.json. Everything runs in namespaces named with this script's PID;
# the trap powers the machine off and deletes them, also on failure. The Debian root file system
# is made once with debootstrap (the Debian mirror) and cached as a tarball under
# /var/cache/tunnat-test/ (TUNNAT_TEST_CACHE). Needs root, systemd-container, debootstrap,
# iproute2, socat, util-linux (nsenter, setpriv), node 20 + npm + python3/make/g++ (the addon).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
started=$SECONDS

fail() {
  echo "systemd-boot: FAIL: $*" >&2
  exit 1
}
say() { echo "systemd-boot: [$((SECONDS - started))s] $*"; }

[ "$(id -u)" = 0 ] || fail "needs root"
for c in systemd-nspawn debootstrap ip socat nsenter npm node; do
  command -v "$c" >/dev/null || fail "$c missing (apt-get install systemd-container debootstrap iproute2 socat)"
done

# --- what `systemctl stop` removes, and what it keeps (one place, adjust here) -------------
# Each entry: a description and a command run in the machine that prints something while the
# item is present. `systemctl stop` removes PLUMBING_CHECKS; the guard (GUARD_CHECKS: the policy
# rules steering the inside into table 4242, whose prohibit route and nft table keep the gateway
# closed while no daemon runs) stays until `tunnat down`, which must leave none of either.
PLUMBING_CHECKS=(
  "the TUN device|ip -o link show dev tunnat0 2>/dev/null"
  "the NAT address route in main|ip -4 route show 203.0.113.1/32"
  "the proxy ARP entry|ip neigh show proxy 203.0.113.1"
  "the plumbing state file|ls /var/lib/tunnat/plumbing.json 2>/dev/null"
  "the control socket|ls /run/tunnat/tunnat.sock 2>/dev/null"
)
GUARD_CHECKS=(
  "tunnat's policy rules (priority 4242)|ip -4 rule show priority 4242"
  "the prohibit route of table 4242|ip -4 route show table 4242 type prohibit"
  "the guard's nft table|nft list table ip tunnat_4242 2>/dev/null"
)

# --- addresses (lab/lab.json) --------------------------------------------------------------
lab() { node -p "const l=require('$repo/lab/lab.json'); $1"; }
INSIDE="$(lab 'l.inside.prefix')"
GW="$(lab 'l.inside.gateway')"
P1="$(lab 'l.inside.hosts.p1')"
OUT_ADDR="$(lab 'l.outside.natInterfaceAddress')"
NAT_ADDR="$(lab 'l.outside.natAddress')"
INET="$(lab 'l.outside.inet[0]')"
IN_LEN="${INSIDE#*/}"
OUT_LEN="$(lab 'l.outside.prefix.split("/")[1]')"
PORT=8080
# The checks above name the lab's defaults; a changed lab.json must change them too.
[ "$NAT_ADDR" = 203.0.113.1 ] || fail "PLUMBING_CHECKS name 203.0.113.1, lab.json says $NAT_ADDR"

NS_C="tsb-$$-c"
NS_P1="tsb-$$-p1"
NS_INET="tsb-$$-inet"
MACHINE="tsb$$"
work="$(mktemp -d /var/tmp/tunnat-boot.XXXXXX)"
root="$work/root"
nspawn_pid=""
server_pid=""
leader=""
timer_pid=""

cleanup() {
  local rc=$?
  set +e
  if [ -n "$timer_pid" ]; then
    # shellcheck disable=SC2046 # the timer's sleep, by its parent's pid
    kill $(pgrep -P "$timer_pid") "$timer_pid" 2>/dev/null
  fi
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ "$rc" != 0 ] && [ -n "$leader" ]; then
      echo "--- journalctl -u tunnat (last 60 lines)" >&2
      in_machine journalctl -u tunnat --no-pager -n 60 >&2
    fi
    in_machine systemctl poweroff >/dev/null 2>&1
    for _ in $(seq 1 30); do
      kill -0 "$nspawn_pid" 2>/dev/null || break
      sleep 1
    done
    kill -TERM "$nspawn_pid" 2>/dev/null
    sleep 2
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  if [ "$rc" != 0 ] && [ -f "$work/nspawn.log" ]; then
    echo "--- machine console (last 15 lines)" >&2
    tail -n 15 "$work/nspawn.log" >&2
  fi
  for ns in "$NS_C" "$NS_P1" "$NS_INET"; do ip netns del "$ns" 2>/dev/null; done
  # Nothing may still be mounted below the root before it is removed.
  if ! grep -q " $root" /proc/mounts; then rm -rf "$work"; else echo "systemd-boot: $root still mounted; left in place" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "systemd-boot: interrupted (or over the time limit)" >&2; exit 130' INT TERM
# The whole run is bounded (every wait below is bounded too): TUNNAT_BOOT_TIMEOUT seconds.
(
  sleep "${TUNNAT_BOOT_TIMEOUT:-900}"
  kill -TERM $$
) >/dev/null 2>&1 &
timer_pid=$!

# --- 1. the Debian 12 root file system (cached) ----------------------------------------------
cache="${TUNNAT_TEST_CACHE:-/var/cache/tunnat-test}"
packages="systemd,systemd-sysv,dbus,iproute2,nftables,iputils-ping,procps,kmod,util-linux"
key="$(printf '%s' "bookworm minbase $packages" | sha256sum | cut -c1-12)"
tarball="$cache/debian12-$key.tar"
mkdir -p "$cache" "$root"
if [ ! -f "$tarball" ]; then
  say "debootstrap bookworm (first run; cached as $tarball)"
  debootstrap --variant=minbase --include="$packages" bookworm "$work/build" \
    http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
    {
      tail -20 "$work/debootstrap.log" >&2
      fail "debootstrap failed"
    }
  rm -rf "$work/build/var/cache/apt/archives/"*.deb
  tar -C "$work/build" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work/build"
fi
tar -C "$root" -xf "$tarball"
say "root file system ready"

# --- 2. install tunnat as a user would (docs/ec2.md §7-8) ------------------------------------
# node: this machine's binary (Debian 12 glibc on both sides). The package: `npm pack`, then
# `npm install --global --prefix /usr` of the tarball, run here with the machine's root as the
# prefix (the machine has no network; node-gyp builds the addon against the same node).
install -m 0755 "$(command -v node)" "$root/usr/bin/node"
npm pack --silent --pack-destination "$work" >"$work/pack.out" 2>"$work/pack.err" ||
  {
    cat "$work/pack.err" >&2
    fail "npm pack failed"
  }
tgz="$(ls "$work"/tunnat-*.tgz)"
npm install --global --prefix "$root/usr" --no-audit --no-fund --loglevel=error "$tgz" \
  >"$work/install.log" 2>&1 || {
  tail -20 "$work/install.log" >&2
  fail "npm install -g of $(basename "$tgz") failed"
}
pkg="$root/usr/lib/node_modules/tunnat"
[ -f "$pkg/build/Release/tunnat_tun.node" ] || fail "the addon was not built on install"
[ -e "$root/usr/bin/tunnat" ] || fail "no /usr/bin/tunnat after npm install -g"
install -m 0644 "$pkg/systemd/tunnat.service" "$root/etc/systemd/system/tunnat.service"
install -m 0644 "$pkg/systemd/tunnat.sysusers" "$root/usr/lib/sysusers.d/tunnat.conf"
install -m 0644 "$pkg/systemd/tunnat.sysctl" "$root/etc/sysctl.d/60-tunnat.conf"
install -d "$root/etc/tunnat"
write_config() { # $1: UDP timeout in seconds
  cat >"$root/etc/tunnat/tunnat.json" <<EOF
{
  "inside": ["$INSIDE"],
  "insideInterface": "in0",
  "natAddress": ["$NAT_ADDR"],
  "outsideInterface": "out0",
  "tun": "tunnat0",
  "metrics": "127.0.0.1:9469",
  "mappingLog": "/var/log/tunnat/mappings.log",
  "stateFile": "/var/lib/tunnat/plumbing.json",
  "timeouts": { "udp": $1 },
  "logLevel": "info"
}
EOF
}
write_config 300
# A quick boot: nothing the test does not need, no getty on the console.
for u in getty@tty1.service console-getty.service systemd-timesyncd.service apt-daily.timer \
  apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
echo "$MACHINE" >"$root/etc/hostname"
say "tunnat $(node -p "require('$pkg/package.json').version") installed in the machine"

# --- 3. namespaces: the machine's, a private host's and the internet's -----------------------
ip netns add "$NS_C"
ip netns add "$NS_P1"
ip netns add "$NS_INET"
ip link add in0 netns "$NS_C" type veth peer name eth0 netns "$NS_P1"
ip link add out0 netns "$NS_C" type veth peer name eth0 netns "$NS_INET"
ip -n "$NS_C" link set lo up
ip -n "$NS_C" addr add "$GW/$IN_LEN" dev in0
ip -n "$NS_C" addr add "$OUT_ADDR/$OUT_LEN" dev out0
ip -n "$NS_C" link set in0 up
ip -n "$NS_C" link set out0 up
ip -n "$NS_C" route add default via "$INET" dev out0
ip -n "$NS_P1" link set lo up
ip -n "$NS_P1" addr add "$P1/$IN_LEN" dev eth0
ip -n "$NS_P1" link set eth0 up
ip -n "$NS_P1" route add default via "$GW"
ip -n "$NS_INET" link set lo up
ip -n "$NS_INET" addr add "$INET/$OUT_LEN" dev eth0
ip -n "$NS_INET" link set eth0 up
# The internet host answers with the address it saw the client as.
ip netns exec "$NS_INET" socat TCP-LISTEN:"$PORT",fork,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR' &
server_pid=$!

# --- 4. boot -------------------------------------------------------------------------------
# With a network namespace of ours (not --private-network) nspawn leaves CAP_NET_ADMIN out of the
# machine's bounding set and mounts /proc/sys read-only; --capability= and
# SYSTEMD_NSPAWN_API_VFS_WRITABLE=network give the machine what a host has, for its own
# namespace only (/proc/sys/net answers for the reader's network namespace).
say "booting systemd in $NS_C"
SYSTEMD_NSPAWN_API_VFS_WRITABLE=network systemd-nspawn --quiet --boot --directory="$root" --machine="$MACHINE" --register=no --keep-unit \
  --network-namespace-path="/run/netns/$NS_C" --capability=CAP_NET_ADMIN --console=passive \
  >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!

in_machine() {
  nsenter --target "$leader" --mount --uts --ipc --net --pid --cgroup --root --wd \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
for _ in $(seq 1 100); do
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited"
  # The machine's PID 1: the child of nspawn that runs systemd.
  for c in $(pgrep -P "$nspawn_pid" || true); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && leader="$c"
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || fail "no systemd in the machine"
state=""
for _ in $(seq 1 120); do
  state="$(in_machine systemctl is-system-running 2>/dev/null || true)"
  case "$state" in running | degraded) break ;; esac
  sleep 0.5
done
case "$state" in running | degraded) ;; *) fail "the machine did not boot (state '$state')" ;; esac
in_machine systemctl --failed --no-legend --plain >"$work/failed" || true
say "booted: $(in_machine systemctl --version | head -1), state $state$([ -s "$work/failed" ] && printf ' (failed: %s)' "$(cut -d' ' -f1 "$work/failed" | tr '\n' ' ')")"
in_machine id tunnat >/dev/null || fail "systemd-sysusers did not create user tunnat at boot"

# --- helpers -------------------------------------------------------------------------------
main_pid() { in_machine systemctl show -P MainPID tunnat; }
prop() { in_machine systemctl show -P "$1" tunnat; }
wait_for() { # $1 seconds, $2 description, rest: a command that succeeds when done
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  fail "$what (waited ${limit}s)"
}
active_with_new_pid() { # $1: the old MainPID
  [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ] &&
    p="$(main_pid)" && [ "$p" != 0 ] && [ "$p" != "$1" ]
}
traffic() { # ping and TCP from p1 to the internet host; the server must see the NAT address
  ip netns exec "$NS_P1" ping -c 2 -W 2 -q "$INET" >/dev/null || fail "ping $P1 -> $INET did not cross ($1)"
  local seen
  seen="$(ip netns exec "$NS_P1" socat -T 5 - TCP:"$INET:$PORT",connect-timeout=5 </dev/null 2>&1)" ||
    fail "TCP $P1 -> $INET:$PORT failed: $seen ($1)"
  [ "$seen" = "$NAT_ADDR" ] || fail "the server saw '$seen', expected the NAT address $NAT_ADDR ($1)"
}
# (Read whole, then grep: `journalctl | grep -q` fails under pipefail when grep quits early.)
journal() { in_machine journalctl -u tunnat --no-pager -o cat "$@"; }
journal_has() { grep -q -- "$1" <<<"$(journal "${@:2}")"; }
reloaded_with_udp() { [[ "$(grep '"msg":"reloaded configuration"' <<<"$(journal)")" == *"\"udp\":$1"* ]]; }
# any_left NAME...: report every listed item still present; fails if one is.
any_left() {
  local entry what cmd out left=0
  for entry in "$@"; do
    what="${entry%%|*}"
    cmd="${entry#*|}"
    out="$(in_machine sh -c "$cmd" || true)"
    if [ -n "$out" ]; then
      echo "  left behind: $what: $out" >&2
      left=1
    fi
  done
  return "$left"
}
plumbing_left() { any_left "${PLUMBING_CHECKS[@]}"; }
# guard_present: every guard item is there.
guard_present() {
  local entry
  for entry in "${GUARD_CHECKS[@]}"; do
    [ -n "$(in_machine sh -c "${entry#*|}" || true)" ] || {
      echo "  missing: ${entry%%|*}" >&2
      return 1
    }
  done
}

# --- 5. start, with /dev/net/tun 0600 root ---------------------------------------------------
# A fresh node in the machine's own /dev (a tmpfs of nspawn's), never the host's device.
in_machine sh -c 'rm -f /dev/net/tun && mknod -m 0600 /dev/net/tun c 10 200 && chown root:root /dev/net/tun'
t0=$SECONDS
in_machine systemctl start tunnat || {
  journal -n 30 >&2
  fail "systemctl start tunnat failed"
}
say "systemctl start returned after $((SECONDS - t0))s"
[ "$(prop Type)" = notify ] || fail "the unit is not Type=notify"
[ "$(prop SubState)" = running ] || fail "tunnat is $(prop ActiveState)/$(prop SubState) after start"
status="$(prop StatusText)"
[[ "$status" == "forwarding $INSIDE via tunnat0 as $NAT_ADDR" ]] || fail "StatusText='$status'"
[ "$(prop WatchdogUSec)" != 0 ] || fail "no watchdog"
tun_perm="$(in_machine stat -c '%a %G' /dev/net/tun)"
[ "$tun_perm" = "660 tunnat" ] || fail "/dev/net/tun is '$tun_perm' after start, expected '660 tunnat'"
say "active: '$status' (READY=1 via sd_notify; /dev/net/tun given to group tunnat: $tun_perm)"
# Nice=-10: the daemon's threads run ahead of the instance's other processes.
nice_of="$(in_machine ps -o ni= -p "$(main_pid)" | tr -d ' ')"
[ "$nice_of" = -10 ] || fail "the daemon runs at nice '$nice_of', expected -10 (Nice= in the unit)"

traffic "after start"
say "ping and TCP crossed; the server saw $NAT_ADDR"

# State and logs in the directories systemd made for the service.
in_machine test -s /var/lib/tunnat/plumbing.json || fail "no plumbing journal in /var/lib/tunnat"
wait_for 5 "no mapping in /var/log/tunnat/mappings.log" in_machine grep -q "$P1" /var/log/tunnat/mappings.log

# --- 6. the control socket: group tunnat, nobody else ---------------------------------------
sock_perm="$(in_machine stat -c '%a %U %G' /run/tunnat/tunnat.sock)"
[ "$sock_perm" = "660 tunnat tunnat" ] || fail "control socket is '$sock_perm', expected '660 tunnat tunnat'"
gid="$(in_machine getent group tunnat | cut -d: -f3)"
in_machine setpriv --reuid=65534 --regid=65534 --groups="$gid" tunnat stats >"$work/stats" 2>&1 ||
  fail "a member of group tunnat cannot run tunnat stats: $(cat "$work/stats")"
grep -q . "$work/stats" || fail "tunnat stats printed nothing"
if in_machine setpriv --reuid=65534 --regid=65534 --clear-groups tunnat stats >"$work/stats2" 2>&1; then
  fail "a user outside group tunnat could use the control socket"
fi
grep -q "permission denied" "$work/stats2" || fail "a refused user is not told why: $(cat "$work/stats2")"
say "control socket $sock_perm: group tunnat may use it, others are refused ($(head -c 80 "$work/stats2"))"

# --- 7. journal priorities ---------------------------------------------------------------------
# A reload with a bad config logs an error and keeps the old settings.
cp "$root/etc/tunnat/tunnat.json" "$work/good.json"
echo '{ "inside": ["not a prefix"] }' >"$root/etc/tunnat/tunnat.json"
in_machine systemctl reload tunnat
wait_for 10 "the failed reload was not logged" journal_has 'reload failed'
cp "$work/good.json" "$root/etc/tunnat/tunnat.json"
warnings="$(journal -p warning)"
grep -q '"msg":"reload failed; keeping the old settings"' <<<"$warnings" ||
  fail "the error is not under journalctl -p warning: $warnings"
if grep -q '"msg":"forwarding"' <<<"$warnings"; then fail "an info line shows under -p warning"; fi
journal_has '"msg":"forwarding"' -p info || fail "the info line is not under -p info"
prio="$(in_machine journalctl -u tunnat --no-pager -o export | sed -n 's/^PRIORITY=//p' | sort -u | tr '\n' ' ')"
say "journal: error under -p warning, info only under -p info (priorities seen: $prio)"
[ "$(prop SubState)" = running ] || fail "a failed reload stopped the service"

# --- 8. reload applies new timeouts ------------------------------------------------------------
write_config 600
in_machine systemctl reload tunnat
wait_for 10 "the reload was not logged" reloaded_with_udp 600
ip netns exec "$NS_P1" sh -c "echo x | socat -T 1 - UDP:$INET:5353,sourceport=40001" >/dev/null 2>&1 || true
udp="$(in_machine tunnat flows --proto udp --json 2>/dev/null | head -1)"
timeout="$(node -p "JSON.parse(process.argv[1]).timeout" "$udp" 2>/dev/null || echo none)"
[ "$timeout" != none ] && [ "$timeout" -gt 300 ] && [ "$timeout" -le 600 ] ||
  fail "after reload a new UDP flow has timeout '$timeout', expected 300 < t <= 600 ($udp)"
[ "$(prop StatusText)" = "forwarding $INSIDE via tunnat0 as $NAT_ADDR" ] || fail "status after reload: $(prop StatusText)"
say "reload: new UDP flows get the new timeout ($timeout s); READY=1 again"

# --- 9. a crash is restarted --------------------------------------------------------------------
pid="$(main_pid)"
in_machine systemctl kill -s KILL tunnat
wait_for 30 "tunnat was not restarted after SIGKILL" active_with_new_pid "$pid"
traffic "after the SIGKILL restart"
journal_has "removing a stopped run's plumbing" -p warning ||
  fail "the restarted daemon did not remove the dead run's plumbing from /var/lib/tunnat"
say "SIGKILL: restarted as pid $(main_pid) (NRestarts=$(prop NRestarts)), leftovers removed, traffic crosses"

# --- 10. the watchdog kills a stalled daemon -----------------------------------------------------
pid="$(main_pid)"
t0=$SECONDS
in_machine kill -STOP "$pid"
wait_for 60 "a stopped (SIGSTOP) daemon was not restarted by the watchdog" active_with_new_pid "$pid"
journal_has 'Watchdog timeout' ||
  fail "systemd did not log a watchdog timeout"
traffic "after the watchdog restart"
say "watchdog: SIGSTOP'd daemon killed and restarted after $((SECONDS - t0))s, traffic crosses"

# --- 11. stop removes the plumbing ---------------------------------------------------------------
in_machine systemctl stop tunnat
[ "$(prop ActiveState)" = inactive ] || fail "tunnat is $(prop ActiveState) after stop"
plumbing_left || fail "systemctl stop left plumbing behind"
if ip netns exec "$NS_P1" ping -c 1 -W 1 -q "$INET" >/dev/null 2>&1; then
  fail "traffic still crosses after stop"
fi
journal_has '"code":0,"msg":"stopped"' ||
  fail "the daemon did not stop cleanly: $(journal | grep '"msg":"stop' | tail -3)"
stop_ms="$(journal | node -e '
  let a = 0, b = 0;
  for (const l of require("fs").readFileSync(0, "utf8").split("\n")) {
    try { const o = JSON.parse(l); if (o.msg === "stopping") a = o.time; if (o.msg === "stopped") b = o.time; } catch {}
  }
  console.log(b - a);')"
say "stop: took ${stop_ms} ms; ${#PLUMBING_CHECKS[@]} checks find nothing left; traffic no longer crosses"
guard_present || fail "systemctl stop removed the guard: the gateway would fail open"
say "stop: the guard (${#GUARD_CHECKS[@]} items) keeps the gateway closed"

# --- tunnat down: the operator opens the gateway on purpose -----------------------------------
down_out="$(in_machine tunnat down --config /etc/tunnat/tunnat.json)" || fail "tunnat down failed: $down_out"
any_left "${PLUMBING_CHECKS[@]}" "${GUARD_CHECKS[@]}" || fail "tunnat down left something behind"
again="$(in_machine tunnat down --config /etc/tunnat/tunnat.json)" || fail "a second tunnat down failed"
[[ "$again" == *"nothing to remove"* ]] || fail "a second tunnat down did not say nothing to remove: $again"
say "down: removed the guard; a second run has nothing to remove"

say "PASS in $((SECONDS - started))s"
