#!/usr/bin/env bash
# `make deploy-check`: validates deploy/ and the NATS server configs offline — no Docker engine,
# no Kubernetes. Installs its pinned tools (scripts/deploy-check-requirements.txt) into the
# git-ignored .tools/deploy-venv the first time (from the package registry; later runs need no
# network), installs the pinned nats-server, then runs scripts/deploy-check.py, which prints
# one line per check and "N passed, N failed" at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv=".tools/deploy-venv"
requirements="scripts/deploy-check-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the deploy-check tools into $venv ..."
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    -r "$requirements"
  echo "$want" > "$stamp"
fi

scripts/install-nats-server.sh >/dev/null

exec "$venv/bin/python" scripts/deploy-check.py "$@"
