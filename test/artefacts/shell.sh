#!/bin/bash
# CI check: the deployment shell scripts parse (bash -n) and pass shellcheck (Debian 12:
# apt-get install shellcheck; skipped with a note when it is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts=(deploy/*.sh test/artefacts/*.sh scripts/*.sh)
for s in "${scripts[@]}"; do bash -n "$s"; done
if command -v shellcheck >/dev/null; then
  shellcheck -x -S warning "${scripts[@]}"
  echo "shell: ${#scripts[@]} scripts parse and pass shellcheck"
else
  echo "shell: ${#scripts[@]} scripts parse; shellcheck not installed, not run"
fi
