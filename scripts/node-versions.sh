#!/usr/bin/env bash
# Runs test suites on Node.js lines other than the machine's (CI: .ci/run). The Node binaries
# come from the npm registry as packages (`node@22`, `node@24`: the package's preinstall
# installs node-linux-<arch> from the same registry, no other download), into a cache directory,
# never over the machine's own node; that directory is put first on PATH for the run only.
# The native addon is not rebuilt: it uses N-API (node-addon-api), whose ABI is stable across
# Node versions, so the build made by `npm ci` on the machine's Node loads on every line.
#
# Usage: bash scripts/node-versions.sh [MAJOR:SUITE[,SUITE]...]   (default: 22:unit,netns 24:unit,netns)
# Needs `npm run build` first. Each run's summary line is prefixed with its Node version, so the
# last plain "N passed, N failed, N skipped" line of CI stays the README's test command's.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TUNNAT_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunnat/node}"
plan=("$@")
[ ${#plan[@]} -gt 0 ] || plan=("22:unit,netns" "24:unit,netns")
[ -d dist/test ] || {
  echo "node-versions: dist/test missing: run npm run build first" >&2
  exit 2
}

status=0
for item in "${plan[@]}"; do
  major="${item%%:*}"
  suites="${item#*:}"
  [[ "$major" =~ ^[0-9]+$ ]] || {
    echo "node-versions: bad item '$item' (expected MAJOR:SUITE[,SUITE])" >&2
    exit 2
  }
  dir="$cache/$major"
  bin="$dir/node_modules/node/bin/node"
  if ! [ -x "$bin" ] || ! "$bin" -e "process.exit(process.versions.node.split('.')[0] === '$major' ? 0 : 1)"; then
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '{ "private": true }\n' >"$dir/package.json"
    start=$SECONDS
    (cd "$dir" && npm install --no-audit --no-fund --no-save --loglevel=error "node@$major")
    echo "# node $major: installed $("$bin" --version) into $dir in $((SECONDS - start)) s"
  fi
  version="$("$bin" --version)"
  echo "# node $version: suites ${suites//,/ }"
  start=$SECONDS
  # shellcheck disable=SC2086 # the suite list splits on purpose
  if ! PATH="$(dirname "$bin"):$PATH" node test/run.js ${suites//,/ } |
    sed -E "s/^([0-9]+ passed, [0-9]+ failed.*)$/# node $version ${suites}: \1/"; then
    status=1
  fi
  echo "# node $version: ${suites} took $((SECONDS - start)) s"
done
exit "$status"
