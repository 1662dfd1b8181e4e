#!/bin/bash
# CI check: the systemd unit's sandbox. Fails when
#  - `systemd-analyze security --offline=true` rates systemd/tunnat.service above 2.5,
#  - `systemd-analyze verify` finds an error in it (run offline against a scratch root, with
#    stand-ins for the files the unit names: /usr/bin/tunnat and the sysctl file),
#  - the unit grants a capability other than CAP_NET_ADMIN, or runs as root,
#  - the unit sets an option the real run showed to break the daemon (ProcSubset=pid hides
#    /proc/sys; test/artefacts/systemd-boot.sh boots a real systemd with the unit), or drops
#    Type=notify and its watchdog,
#  - node does NOT abort under the kernel's W^X policy (PR_SET_MDWE, what MemoryDenyWriteExecute=
#    enforces): that would make the unit's claim that it cannot be used stale. Skipped on kernels
#    before 6.3.
# Needs systemd-analyze (Debian 12: apt-get install systemd) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
unit=systemd/tunnat.service
max=2.5

command -v systemd-analyze >/dev/null || {
  echo "systemd-security: systemd-analyze missing (apt-get install systemd)" >&2
  exit 1
}

out="$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1)" || true
score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")"
[ -n "$score" ] || {
  printf '%s\n' "$out" >&2
  echo "systemd-security: no exposure level in the output" >&2
  exit 1
}
echo "systemd-security: $unit exposure $score (max $max)"
if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
  printf '%s\n' "$out" | grep '✗' >&2
  echo "systemd-security: exposure $score is above $max" >&2
  exit 1
fi

# Capabilities and user, read back from the unit.
for key in AmbientCapabilities CapabilityBoundingSet; do
  value="$(sed -n "s/^$key=//p" "$unit")"
  [ "$value" = CAP_NET_ADMIN ] || {
    echo "systemd-security: $key=$value, expected CAP_NET_ADMIN only" >&2
    exit 1
  }
done
user="$(sed -n 's/^User=//p' "$unit")"
dynamic="$(sed -n 's/^DynamicUser=//p' "$unit")"
if [ -z "$user" ] || [ "$user" = root ] || [ "$user" = 0 ]; then
  [ "$dynamic" = yes ] || {
    echo "systemd-security: the unit runs as root" >&2
    exit 1
  }
fi

# Options that broke the daemon under a real systemd, and the notify contract.
if grep -q '^ProcSubset=pid' "$unit"; then
  echo "systemd-security: ProcSubset=pid hides /proc/sys, which the daemon reads" >&2
  exit 1
fi
for want in Type=notify NotifyAccess=main 'WatchdogSec=[1-9]' StartLimitIntervalSec=0 KillMode=mixed; do
  grep -q "^$want" "$unit" || {
    echo "systemd-security: the unit lacks $want" >&2
    exit 1
  }
done

# systemd-analyze verify, offline: a scratch root holding the unit and stand-ins for the paths
# it names (verify checks that ExecStart= binaries exist and are executable).
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/bin" "$root/usr/lib/systemd" "$root/bin" \
  "$root/etc/tunnat" "$root/etc/sysctl.d"
cp "$unit" "$root/etc/systemd/system/"
# The targets the unit orders itself against (sysinit.target, network-online.target, ...).
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
for f in usr/bin/tunnat usr/lib/systemd/systemd-sysctl bin/kill bin/sh; do
  printf '#!/bin/sh\n' >"$root/$f"
  chmod +x "$root/$f"
done
cp systemd/tunnat.json "$root/etc/tunnat/tunnat.json"
cp systemd/tunnat.sysctl "$root/etc/sysctl.d/60-tunnat.conf"
verify="$(systemd-analyze verify --man=no --root="$root" "$root/etc/systemd/system/tunnat.service" 2>&1)" ||
  {
    printf '%s\n' "$verify" >&2
    echo "systemd-security: systemd-analyze verify failed" >&2
    exit 1
  }
# Warnings about the unit itself (unknown keys, bad values) are errors here; ones about other
# units of the scratch root are not ours.
if grep -i 'tunnat.service' <<<"$verify" >&2; then
  echo "systemd-security: systemd-analyze verify complained about the unit" >&2
  exit 1
fi
echo "systemd-security: systemd-analyze verify passed"

# MemoryDenyWriteExecute= cannot be used with node: prove it still holds.
mdwe="$(
  python3 - <<'PY' 2>&1
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("MDWE-UNSUPPORTED")
    sys.exit(0)
os.execvp("node", ["node", "-e", "let s = 0; for (let i = 0; i < 1e6; i++) s += i; console.log('NODE-RAN')"])
PY
)" || true
case "$mdwe" in
*MDWE-UNSUPPORTED*) echo "systemd-security: kernel has no PR_SET_MDWE; W^X check skipped" ;;
*NODE-RAN*)
  echo "systemd-security: node ran under W^X: MemoryDenyWriteExecute=yes may now work" >&2
  exit 1
  ;;
*) echo "systemd-security: node aborts under W^X (MemoryDenyWriteExecute=yes stays off)" ;;
esac
