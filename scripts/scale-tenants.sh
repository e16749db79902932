#!/usr/bin/env bash
# Measures what many tenants cost on one node: provisioning N tenants (each its own ingress
# stream and consumer, through `switchyard tenants enable`), nats-server's memory with them,
# and the ingress service idling with one consume loop per tenant (its memory, and the CPU it
# and nats-server burn per second while no message flows). Prints one line per figure.
#
#   scripts/scale-tenants.sh [N] [QUOTA_BYTES]      (defaults: 1000 tenants, 4 MiB each)
#
# Uses the debug binaries (built if needed), a throwaway store and free ports; stops everything
# it started. The figures belong in docs/performance.md with the machine they came from.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
N="${1:-1000}"
QUOTA="${2:-4194304}"
PORT="${PORT:-14222}"
MONITOR="${MONITOR:-18222}"
HTTP="${HTTP:-19101}"
PROBES="${PROBES:-19111}"

scripts/install-nats-server.sh
cargo build --quiet -p switchyard-cli -p switchyard-ingress
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
store="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$store"
}
trap cleanup EXIT INT TERM
sy() { "$bin/switchyard" --server "nats://127.0.0.1:$PORT" "$@"; }
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

.tools/bin/nats-server -c nats/server/single.conf -p "$PORT" -m "$MONITOR" -sd "$store" \
  >"$store/nats.log" 2>&1 &
nats=$!
pids+=("$nats")
# Up once status answers: 0, or 3 while nothing is provisioned yet.
for _ in $(seq 1 100); do
  rc=0; sy status >/dev/null 2>&1 || rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]; then break; fi
  sleep 0.1
done
sy provision >/dev/null
echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)"
echo "nats-server rss before tenants: $(rss_mib "$nats") MiB"

started=$(date +%s.%N)
for i in $(seq 0 $((N - 1))); do
  sy tenants enable "t$i" --max-bytes "$QUOTA" --max-msgs 10000 >/dev/null
done
ended=$(date +%s.%N)
echo "provisioned $N tenants in $(echo "$ended - $started" | bc) s ($(echo "($ended - $started) * 1000 / $N" | bc) ms each, one CLI run per tenant)"
echo "nats-server rss with $N tenant streams: $(rss_mib "$nats") MiB"

SWITCHYARD_INGRESS_NATS__URL="nats://127.0.0.1:$PORT" SWITCHYARD_INGRESS_HTTP__LISTEN="127.0.0.1:$HTTP" \
  SWITCHYARD_INGRESS_HTTP__PROBES_LISTEN="127.0.0.1:$PROBES" "$bin/switchyard-ingress" >"$store/ingress.log" 2>&1 &
ingress=$!
pids+=("$ingress")
ready=$(date +%s.%N)
until [ "$(grep -c "reading the tenant's ingress stream" "$store/ingress.log" 2>/dev/null || true)" -ge "$N" ]; do
  sleep 0.2
  if ! kill -0 "$ingress" 2>/dev/null; then echo "ingress exited; see $store/ingress.log"; exit 1; fi
done
echo "ingress reading all $N tenant streams $(echo "$(date +%s.%N) - $ready" | bc) s after start"
# Idle: over two of ingress's pull waits (tenants::FETCH_WAIT, 20 s), so every tenant's pull
# is renewed in the window.
IDLE="${IDLE:-40}"
sleep 5
t0_n=$(cpu_ticks "$nats"); t0_i=$(cpu_ticks "$ingress")
sleep "$IDLE"
t1_n=$(cpu_ticks "$nats"); t1_i=$(cpu_ticks "$ingress")
hz=$(getconf CLK_TCK)
echo "idle, $IDLE s: nats-server $(echo "scale=1; ($t1_n - $t0_n) * 100 / $hz / $IDLE" | bc)% of a core, ingress $(echo "scale=1; ($t1_i - $t0_i) * 100 / $hz / $IDLE" | bc)% of a core"
echo "rss idle: nats-server $(rss_mib "$nats") MiB, ingress $(rss_mib "$ingress") MiB"
