#!/usr/bin/env bash
# Runs Switchyard locally on the embedded default, no Docker: the pinned nats-server (installed
# into .tools/ by the project itself) with nats/server/single.conf and a store in .run/,
# provisioning, a demo tenant and route, the services (ingress, idempotency, backpressure,
# egress, dlq), the management API with the web console, and a demo
# webhook sink. Logs go to .run/*.log. Ctrl-C stops everything; the store is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
SINK_PORT="${SINK_PORT:-9000}"
DEMO_SECRET="whsec_ZGVtby1zZWNyZXQtZm9yLWxvY2FsLXJ1bnM="
RUN_DIR="$root/.run"
mkdir -p "$RUN_DIR"

# Every port this run listens on (the services' are fixed: 9101-9105 and ingress's probes on
# 9111). One already taken means another run (or another program) holds it: stop before
# anything, so its logs and store are left alone.
for port in "$NATS_PORT" "$NATS_MONITOR_PORT" "$SINK_PORT" 9101 9102 9103 9104 9105 9106 9111; do
  if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
    exec 3<&-
    echo "port $port is already in use (is another \`make run\` running?); stop it first," >&2
    echo "or move NATS_PORT / NATS_MONITOR_PORT / SINK_PORT (the service ports are fixed)" >&2
    exit 1
  fi
done

scripts/install-nats-server.sh
echo "building the services and the CLI (first time: a few minutes)..."
cargo build --quiet -p switchyard-cli -p switchyard-ingress -p switchyard-idempotency -p switchyard-backpressure \
  -p switchyard-egress -p switchyard-dlq-service -p switchyard-demo-sink
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
url="nats://127.0.0.1:$NATS_PORT"
sy() { "$bin/switchyard" --server "$url" "$@"; }

pids=()
cleanup() {
  echo
  echo "stopping (services drain first)..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Polls an HTTP endpoint with bash alone (no curl needed) until it answers 200.
wait_http() {
  local port=$1 path=$2 name=$3
  for _ in $(seq 1 300); do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      printf 'GET %s HTTP/1.0\r\n\r\n' "$path" >&3
      if head -1 <&3 | grep -q ' 200'; then exec 3<&-; return 0; fi
      exec 3<&-
    fi
    sleep 0.1
  done
  echo "$name did not become ready; see $RUN_DIR/$name.log" >&2
  exit 1
}

.tools/bin/nats-server -c nats/server/single.conf -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
  -sd "$RUN_DIR/nats" >"$RUN_DIR/nats-server.log" 2>&1 &
pids+=($!)
wait_http "$NATS_MONITOR_PORT" /healthz nats-server

sy provision --fix >/dev/null   # --fix: a store from an older version is brought up to date
sy tenants enable demo >/dev/null
sy routes set demo _ webhook --webhook "http://127.0.0.1:$SINK_PORT/ok" --secret "$DEMO_SECRET" >/dev/null

"$bin/switchyard-demo-sink" --listen "127.0.0.1:$SINK_PORT" --secret "$DEMO_SECRET" >"$RUN_DIR/demo-sink.log" 2>&1 &
pids+=($!)
# name:port of the probes. Ingress's producer API listens apart, on 9101.
for svc in ingress:9111 idempotency:9102 backpressure:9103 egress:9104 dlq:9105; do
  name="${svc%%:*}"; port="${svc##*:}"
  upper="$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  if [ "$name" = ingress ]; then
    listen=("SWITCHYARD_INGRESS_HTTP__LISTEN=127.0.0.1:9101"
      "SWITCHYARD_INGRESS_HTTP__PROBES_LISTEN=127.0.0.1:$port")
  else
    listen=("SWITCHYARD_${upper}_HTTP__LISTEN=127.0.0.1:$port")
  fi
  env "SWITCHYARD_${upper}_NATS__URL=$url" "${listen[@]}" \
    "$bin/switchyard-$name" >"$RUN_DIR/$name.log" 2>&1 &
  pids+=($!)
  wait_http "$port" /readyz "$name"
done

# The management API and the web console (/ui), with an operator token made for this run
# (kept in .run/, readable by its owner only).
token_file="$RUN_DIR/operator-token"
if [ ! -s "$token_file" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
fi
"$bin/switchyard" --server "$url" api serve --listen 127.0.0.1:9106 \
  --operator-token-file "$token_file" >"$RUN_DIR/api.log" 2>&1 &
pids+=($!)
wait_http 9106 /readyz api

cat <<MSG

Switchyard is running:
  nats-server   $url (monitoring http://127.0.0.1:$NATS_MONITOR_PORT)
  ingress       http://127.0.0.1:9101  (producer API: POST /v1/messages/{tenant}/{team}/{platform})
                http://127.0.0.1:9111/metrics  (its probes and metrics, on their own listener)
  idempotency   http://127.0.0.1:9102/metrics
  backpressure  http://127.0.0.1:9103/metrics
  egress        http://127.0.0.1:9104/metrics
  dlq           http://127.0.0.1:9105/metrics  (safety net, replay jobs, stats, alerts)
  api, console  http://127.0.0.1:9106/ui  (log in with the token in $token_file)
  demo sink     http://127.0.0.1:$SINK_PORT  (prints deliveries to $RUN_DIR/demo-sink.log)
  tenant "demo", route demo/_/webhook → the demo sink

Try (the README's quickstart walks the whole loop):
  $bin/switchyard publish demo ops webhook --id order-1 --content-type application/json --data '{"hello":"world"}'
  tail -f $RUN_DIR/demo-sink.log
  $bin/switchyard status

Ctrl-C stops everything.
MSG

wait "${pids[0]}"
