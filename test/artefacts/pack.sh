#!/bin/bash
# CI check: the npm package installs on a clean machine and runs.
#   build -> npm pack into a temp dir -> the tarball holds what an install needs (and no tests)
#   -> `npm install <tgz>` into an empty folder (node-gyp builds the addon from the tarball's
#   binding.gyp + native/) -> `tunnat --version` prints the package version -> `tunnat check`
#   prints its report (it may exit non-zero: the example config names interfaces this machine
#   does not have) -> the addon loads from the installed copy.
# Needs node 20, npm, python3, make, g++ (node-gyp) and the npm registry for the dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() {
  echo "pack: $*" >&2
  exit 1
}

# Type errors fail `npm test`; here only the emitted dist/ matters (tsc emits despite them).
npm run build --silent >"$work/build.out" 2>&1 ||
  echo "pack: warning: npm run build reported errors (see npm test); packing what it emitted" >&2
npm pack --silent --pack-destination "$work" >"$work/pack.out"
tgz="$(ls "$work"/*.tgz)"
echo "pack: $(basename "$tgz") ($(du -k "$tgz" | cut -f1) KiB)"

tar -tzf "$tgz" | sed 's|^package/||' | sort >"$work/contents"
for f in package.json bin/tunnat.js dist/src/cli/main.js dist/src/io/tun.js binding.gyp \
  native/tun.cc systemd/tunnat.service systemd/tunnat.sysctl systemd/tunnat.sysusers \
  systemd/tunnat.json deploy/configure-network.sh deploy/cloud-init.sh docs/ec2.md; do
  grep -qxF "$f" "$work/contents" || fail "$f is missing from the tarball (package.json \"files\")"
done
if grep -E '^(dist/test/|test/|node_modules/|build/|src/.*\.ts$)' "$work/contents" >&2; then
  fail "the tarball carries files an install does not need"
fi

# An empty folder outside the repository: nothing resolves from the repo's node_modules.
app="$work/app"
mkdir "$app"
cd "$app"
printf '{ "name": "tunnat-pack-check", "version": "0.0.0", "private": true }\n' >package.json
npm install --no-audit --no-fund --loglevel=error "$tgz"
installed="$app/node_modules/tunnat"
[ -f "$installed/build/Release/tunnat_tun.node" ] ||
  fail "the addon was not built on install (no build/Release/tunnat_tun.node)"

want="$(node -p "require('$repo/package.json').version")"
got="$(npx --no-install tunnat --version)"
[ "$got" = "$want" ] || fail "tunnat --version printed '$got', expected '$want'"
echo "pack: tunnat --version = $got"

status=0
report="$(npx --no-install tunnat check --config "$installed/systemd/tunnat.json" 2>&1)" || status=$?
printf '%s\n' "$report"
grep -qE '(all checks passed|check\(s\) failed)' <<<"$report" ||
  fail "tunnat check printed no report (exit $status)"
if grep -qE 'Cannot find module|ERR_MODULE_NOT_FOUND|ERR_DLOPEN_FAILED' <<<"$report"; then
  fail "tunnat check could not load its modules"
fi

# The addon loads from the installed copy (what `tunnat run` does first).
node --input-type=module -e "
  const m = await import('$installed/dist/src/io/tun.js');
  const p = m.addonPath?.();
  if (!p || !p.startsWith('$installed/')) { console.error('addon path', p); process.exit(1); }
  console.log('pack: addon at ' + p.slice('$app/'.length));
"
echo "pack: the tarball installs, builds its addon and runs"
