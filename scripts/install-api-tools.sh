#!/usr/bin/env bash
# Installs the management API's conformance tool (schemathesis, pinned in
# scripts/api-conformance-requirements.txt) into the git-ignored .tools/api-venv, from the
# package registry the first time; later runs need no network. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv=".tools/api-venv"
requirements="scripts/api-conformance-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -x "$venv/bin/st" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "installing the API conformance tools into $venv ..."
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
  -r "$requirements"
echo "$want" > "$stamp"
"$venv/bin/st" --version
