#!/usr/bin/env bash
# The write path against the database's own limit, in one run, on a fresh local stack (loopback only,
# every step bounded in time). Installs what is missing (ci/setup.sh; ghz with `go install`).
#
#   1. pgbench on the stack's PostgreSQL: TPC-B-like, then its simple-update mode (16 clients, 20 s each)
#   2. ghz CreateOrder against orders-service running the API alone (release build): 16 connections,
#      16 concurrent calls, 20 s
#   3. ghz UpdateOrderStatus: CREATED -> PAID of every order step 2 created, same load
#   4. the outbox relay alone, draining what steps 2 and 3 left (events/s until the outbox is empty)
#   5. the cache updater alone, a new consumer group reading the whole topic (events/s until its lag
#      is zero, process start and group join included)
#
# Prints each rate, and the API's against pgbench's TPC-B-like rate. Usage: bash loadtest/write-path.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
gobin="$(go env GOPATH)/bin"
[ -x "$gobin/ghz" ] || go install github.com/bojand/ghz/cmd/ghz@v0.93.0
export PATH="$gobin:$PATH"
cargo build --release -q -p harness --bin stack -p service --bin orders-service
bin="${CARGO_TARGET_DIR:-target}/release"
seconds="${WRITE_PATH_SECONDS:-20}"

# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack "$bin/stack"
unset METRICS_ADDR
export RUST_LOG=warn GRPC_ADDR=127.0.0.1:50071
service_pid=
stop_all() {
  [ -n "$service_pid" ] && { kill -TERM "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; }
  stop_stack
}
trap stop_all EXIT

# Starts orders-service with `components`, waits until it listens or has started.
start_service() {
  "$bin/orders-service" run --components "$1" &
  service_pid=$!
  sleep 2
  kill -0 "$service_pid" 2>/dev/null || { echo "write-path: orders-service did not start" >&2; exit 1; }
}
stop_service() {
  kill -TERM "$service_pid" 2>/dev/null || true
  wait "$service_pid" 2>/dev/null || true
  service_pid=
}
sql() { psql -qAtX "$DATABASE_URL" -c "$1"; }
# Requests/s, p99 (ms) and the count of answers that were not OK, from ghz's JSON report.
ghz_summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
bad = sum(n for code, n in r.get("statusCodeDistribution", {}).items() if code != "OK")
p99 = [d["latency"] for d in r["latencyDistribution"] if d["percentage"] == 99][0] / 1e6
rps = r["rps"]
print(f"{rps:.0f} {p99:.1f} {bad}")'
}

echo "== pgbench (16 clients, ${seconds} s each)"
sql "DROP DATABASE IF EXISTS pgbench" >/dev/null 2>&1
sql "CREATE DATABASE pgbench"
pgbench_url="${DATABASE_URL%/*}/pgbench"
pgbench -q -i -s 16 "$pgbench_url" >/dev/null 2>&1
tpcb=$(pgbench -n -c 16 -j 2 -T "$seconds" "$pgbench_url" | awk '/^tps/ {print int($3)}')
simple=$(pgbench -n -N -c 16 -j 2 -T "$seconds" "$pgbench_url" | awk '/^tps/ {print int($3)}')
echo "pgbench TPC-B-like:     $tpcb transactions/s"
echo "pgbench simple-update:  $simple transactions/s"

echo "== ghz against the API alone"
start_service api
ghz_call() {
  ghz --insecure --connections 16 --concurrency 16 --format json "$@" "$GRPC_ADDR"
}
read -r create_rps create_p99 create_bad < <(ghz_call -z "${seconds}s" \
  --call orders.v1.OrderService/CreateOrder \
  -d '{"client_id": 1, "idempotency_key": "{{newUUID}}", "items": [{"sku_id": 10, "quantity": 2, "price": {"currency_code": "EUR", "units": 5}}]}' |
  ghz_summary)
created=$(sql "SELECT count(*) FROM orders")
# Order ids start at 1 and ghz numbers requests from 0: request 0 (order 0) is refused as invalid.
read -r update_rps update_p99 update_bad < <(ghz_call -n "$((created + 1))" \
  --call orders.v1.OrderService/UpdateOrderStatus \
  -d '{"order_id": "{{.RequestNumber}}", "status": "ORDER_STATUS_PAID"}' |
  ghz_summary)
stop_service
echo "CreateOrder:            $create_rps requests/s, p99 $create_p99 ms, $create_bad not OK"
echo "UpdateOrderStatus:      $update_rps requests/s, p99 $update_p99 ms, $update_bad not OK (1: order 0)"

echo "== the relay alone, draining the outbox"
backlog=$(sql "SELECT count(*) FROM outbox")
started=$(date +%s.%N)
start_service relay
until [ "$(sql "SELECT count(*) FROM outbox")" -eq 0 ]; do sleep 0.2; done
drained=$(date +%s.%N)
stop_service
relay_rate=$(python3 -c "print(f'{$backlog / ($drained - $started):.0f}')")
echo "relay:                  $backlog events in $(python3 -c "print(f'{$drained - $started:.1f}')") s: $relay_rate events/s (process start included)"

echo "== the updater alone, a new group reading the whole topic"
export UPDATER_GROUP="write-path-$(date +%s)"
total=$backlog
started=$(date +%s.%N)
start_service updater
# Until the group committed everything (it commits every second).
until [ "$("$bin/stack" lag --group "$UPDATER_GROUP")" -eq 0 ]; do sleep 0.2; done
applied=$(date +%s.%N)
stop_service
updater_rate=$(python3 -c "print(f'{$total / ($applied - $started):.0f}')")
echo "updater:                $total events in $(python3 -c "print(f'{$applied - $started:.1f}')") s: $updater_rate events/s (process start and group join included)"

echo "== ratios (same run)"
python3 -c "print(f'CreateOrder / pgbench TPC-B-like:       {$create_rps / $tpcb:.2f}')"
python3 -c "print(f'UpdateOrderStatus / pgbench TPC-B-like: {$update_rps / $tpcb:.2f}')"
