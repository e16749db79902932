#!/usr/bin/env bash
# Runs Switchyard locally on the embedded default: the pinned nats-server (installed into
# .tools/ by the project itself, no Docker) with nats/server/single.conf and a store in .run/,
# then provisions every declared stream, consumer and bucket. Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
RUN_DIR="$root/.run"
mkdir -p "$RUN_DIR"

scripts/install-nats-server.sh
echo "building the CLI..."
cargo build --quiet -p switchyard-cli
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
switchyard="$bin_dir/switchyard"
url="nats://127.0.0.1:$NATS_PORT"

pids=()
cleanup() {
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

.tools/bin/nats-server -c nats/server/single.conf -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
  -sd "$RUN_DIR/nats" >"$RUN_DIR/nats-server.log" 2>&1 &
pids+=($!)

# Wait until the server answers (no fixed sleep: poll with a deadline).
for _ in $(seq 1 100); do
  if "$switchyard" --server "$url" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "nats-server exited; see $RUN_DIR/nats-server.log" >&2
    tail -20 "$RUN_DIR/nats-server.log" >&2
    exit 1
  fi
  sleep 0.1
done

"$switchyard" --server "$url" provision

cat <<MSG

Switchyard is up on the embedded default:
  nats-server   $url   (monitoring http://127.0.0.1:$NATS_MONITOR_PORT, log $RUN_DIR/nats-server.log)
  store         $RUN_DIR/nats

Try:
  $switchyard --server $url status
  $switchyard --server $url status --json

Ctrl-C stops everything; the store in .run/ is kept for the next run.
MSG

wait "${pids[0]}"
