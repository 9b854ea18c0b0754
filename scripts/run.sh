#!/usr/bin/env bash
# Starts the whole system on this machine and feeds it live readings:
#   - a private PostgreSQL cluster in .data/pgdata (kept across runs), from the
#     system's PostgreSQL binaries, installed with apt when missing;
#   - the Kafka cluster in $KAFKA_BROKERS if set (its topics must exist), or
#     else dev-broker: an in-memory, DEVELOPMENT-ONLY mock Kafka cluster;
#   - migrations, ingest-worker, ingest-gateway, query-api;
#   - fleet-sim posting readings for a handful of vehicles and meters.
# Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
source scripts/apt.sh

DATA_DIR="$PWD/.data"
PG_PORT="${PG_PORT:-55432}"
GATEWAY_ADDR="${GATEWAY_ADDR:-127.0.0.1:3000}"
QUERY_API_ADDR="${QUERY_API_ADDR:-127.0.0.1:3001}"
export KAFKA_TOPIC="${KAFKA_TOPIC:-energy.readings}"
export GATEWAY_ADDR QUERY_API_ADDR
mkdir -p "$DATA_DIR/logs"
chmod 755 "$DATA_DIR"

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  # Reverse start order: the simulator first, the broker last.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  pg_stop "$DATA_DIR/pgdata"
  echo "stopped; data kept in $DATA_DIR"
}
trap stop_all INT TERM EXIT

echo "building (the first build takes a few minutes)..."
build_deps_ensure
cargo build --bins --quiet
BIN="$PWD/target/debug"

pg_ensure_installed
if ! pg_as_owner "$(pg_find_bindir)/pg_ctl" -D "$DATA_DIR/pgdata" status >/dev/null 2>&1; then
  pg_start "$DATA_DIR/pgdata" "$PG_PORT"
fi
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'energy'" | grep -q 1 \
  || psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE energy"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/energy"

if [ -z "${KAFKA_BROKERS:-}" ]; then
  rm -f "$DATA_DIR/bootstrap"
  "$BIN/dev-broker" --bootstrap-file "$DATA_DIR/bootstrap" \
    --topic "$KAFKA_TOPIC:4" --topic "$KAFKA_TOPIC.dlq:1" >"$DATA_DIR/logs/dev-broker.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$DATA_DIR/bootstrap" ] && break; sleep 0.1; done
  [ -s "$DATA_DIR/bootstrap" ] || { echo "dev-broker did not start: see $DATA_DIR/logs/dev-broker.log"; exit 1; }
  KAFKA_BROKERS="$(cat "$DATA_DIR/bootstrap")"
  echo "KAFKA_BROKERS not set: using dev-broker at $KAFKA_BROKERS (in-memory, DEVELOPMENT ONLY)"
fi
export KAFKA_BROKERS

# The local demo serves without API keys, explicitly: anyone on this machine
# may ingest and read. Give API_KEYS (and FLEET_SIM_API_KEY, a key with the
# ingest role) to run it with access control.
if [ -z "${API_KEYS:-}${API_KEYS_FILE:-}" ]; then
  export AUTH_DISABLED=true
  echo "API_KEYS not set: AUTH_DISABLED=true, the services accept requests without a key (local demo only)"
fi

"$BIN/ingest-worker" migrate
"$BIN/ingest-worker" >"$DATA_DIR/logs/ingest-worker.log" 2>&1 & pids+=($!)
"$BIN/ingest-gateway" >"$DATA_DIR/logs/ingest-gateway.log" 2>&1 & pids+=($!)
"$BIN/query-api" >"$DATA_DIR/logs/query-api.log" 2>&1 & pids+=($!)

wait_ready() {
  for _ in $(seq 300); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become ready: see $DATA_DIR/logs/"; exit 1
}
wait_ready "http://$GATEWAY_ADDR/readyz"
wait_ready "http://$QUERY_API_ADDR/readyz"

# Five vehicles reporting every 10 s: the last hour as history, then live.
"$BIN/fleet-sim" --gateway-url "http://$GATEWAY_ADDR" --vehicles 5 --interval-seconds 10 \
  --history-minutes 60 --reassign-minutes 30 --faulty 0.2 --live \
  >"$DATA_DIR/logs/fleet-sim.log" 2>&1 & pids+=($!)

cat <<INFO

Energy Ingestion Engine is running (logs in $DATA_DIR/logs/):
  ingest-gateway  http://$GATEWAY_ADDR     (POST /v1/ingest)
  query-api       http://$QUERY_API_ADDR   (GET /v1/analytics/performance/{vehicleId})
  PostgreSQL      $DATABASE_URL
  Kafka           $KAFKA_BROKERS
fleet-sim posts readings for EV-01..EV-05 (EV-05 is the faulty one) every 10 s;
the vehicles move to the next meter every 30 minutes.

Try (a few seconds after start):
  curl -s http://$QUERY_API_ADDR/v1/analytics/performance/EV-05

Ctrl-C stops everything.
INFO

wait "${pids[@]}"
