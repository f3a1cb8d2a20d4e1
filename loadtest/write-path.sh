#!/usr/bin/env bash
# The write path against the database's own limit, in one run, on a fresh local stack (loopback only,
# every step bounded in time). Installs what is missing (ci/setup.sh; ghz with `go install`).
#
#   1. pgbench on the stack's PostgreSQL: its simple-update mode, then CreateOrder's own statement
#      (loadtest/pgbench/create-order.sql), with and without the outbox's NOTIFY trigger (16 clients,
#      20 s each)
#   2. rounds (3, WRITE_PATH_ROUNDS) of: pgbench TPC-B-like; ghz CreateOrder against orders-service
#      running the API alone (release build), 16 connections, 16 concurrent calls, 20 s; ghz
#      UpdateOrderStatus, CREATED -> PAID of every order the round created, same load
#   3. the outbox relay alone, draining what step 2 left (events/s until the outbox is empty)
#   4. the cache updater alone, a new consumer group reading the whole topic (events/s until its lag
#      is zero, process start and group join included)
#   5. the project's goose driver, 16 users, against the whole service (API, relay and updater on the
#      same cores): --weights creates=1, then --weights status-updates=1 (reports in target/loadtest/)
#
# Prints each rate, the API's against pgbench's TPC-B-like rate (the median of the rounds' ratios), and
# for each timed step the cores busy (of 2 here): the service's, ghz's, and the rest (PostgreSQL,
# mostly). Usage: bash loadtest/write-path.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
gobin="$(go env GOPATH)/bin"
[ -x "$gobin/ghz" ] || go install github.com/bojand/ghz/cmd/ghz@v0.93.0
export PATH="$gobin:$PATH"
cargo build --release -q -p harness --bin stack -p service --bin orders-service -p loadtest --bin loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
seconds="${WRITE_PATH_SECONDS:-20}"
rounds="${WRITE_PATH_ROUNDS:-3}"
# ghz on one core (GOMAXPROCS 1) by default: it shares the two cores with the database it measures, and
# on two it spent more CPU per call for the same 16 calls in flight (docs/BENCHMARKS.md, section 6).
ghz_cpus="${GHZ_CPUS:-1}"
cores=$(nproc)
report_dir=$(mktemp -d)

# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack "$bin/stack"
unset METRICS_ADDR
export RUST_LOG=warn GRPC_ADDR=127.0.0.1:50071
trap 'stop_stack; rm -rf "$report_dir"' EXIT

sql() { psql -qAtX "$DATABASE_URL" -c "$1"; }
# CPU ticks (1/100 s) of process $1, and of the whole machine: busy and total.
process_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
# Runs a command and prints the cores it kept busy ("cores busy: <machine>"), in $1 a label.
with_cores() {
  local label=$1 busy0 total0 busy1 total1
  shift
  read -r busy0 total0 < <(machine_ticks)
  "$@"
  read -r busy1 total1 < <(machine_ticks)
  python3 -c 'import sys; label, cores, b0, t0, b1, t1 = sys.argv[1], *map(int, sys.argv[2:])
print(f"  {label}: {cores * (b1 - b0) / (t1 - t0):.2f} of {cores} cores busy")' \
    "$label" "$cores" "$busy0" "$total0" "$busy1" "$total1" >&2
}
# Requests/s, p99 (ms), the count of answers that were not OK, and the errors ghz saw, from ghz's JSON
# report.
ghz_summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
bad = sum(n for code, n in r.get("statusCodeDistribution", {}).items() if code != "OK")
p99 = [d["latency"] for d in r["latencyDistribution"] if d["percentage"] == 99][0] / 1e6
rps = r["rps"]
errors = "; ".join(f"{n}x {e}" for e, n in r.get("errorDistribution", {}).items()) or "none"
print(f"{rps:.0f} {p99:.1f} {bad} {errors}")'
}
# ghz against the service, with the cores the service, ghz and the rest of the machine kept busy.
ghz_call() {
  local busy0 total0 busy1 total1 service0 service1 report=$1
  shift
  read -r busy0 total0 < <(machine_ticks)
  service0=$(process_ticks "$SERVICE_PID")
  /usr/bin/time -f "%U %S" -o "$report.time" \
    ghz --insecure --cpus "$ghz_cpus" --connections 16 --concurrency 16 --format json "$@" "$GRPC_ADDR" >"$report"
  read -r busy1 total1 < <(machine_ticks)
  service1=$(process_ticks "$SERVICE_PID")
  python3 - "$cores" "$report.time" "$busy0" "$total0" "$busy1" "$total1" "$service0" "$service1" <<'PY' >"$report.cores"
import sys
cores = int(sys.argv[1])
user, system = map(float, open(sys.argv[2]).read().split())
busy0, total0, busy1, total1, service0, service1 = map(float, sys.argv[3:])
seconds = (total1 - total0) / 100 / cores
busy = (busy1 - busy0) / 100 / seconds
service = (service1 - service0) / 100 / seconds
ghz = (user + system) / seconds
print(f"cores busy {busy:.2f}: service {service:.2f}, ghz {ghz:.2f}, rest {busy - service - ghz:.2f}")
PY
}

echo "== pgbench (16 clients, ${seconds} s each)"
sql "DROP DATABASE IF EXISTS pgbench" >/dev/null 2>&1
sql "CREATE DATABASE pgbench"
pgbench_url="${DATABASE_URL%/*}/pgbench"
pgbench -q -i -s 16 "$pgbench_url" >/dev/null 2>&1
tps() { awk '/^tps/ {print int($3)}'; }
simple=$(with_cores "simple-update" pgbench -n -N -c 16 -j 2 -T "$seconds" "$pgbench_url" | tps)
# CreateOrder's statement on the service's own schema (the service migrates it at start), then the
# tables emptied again and the ids restarted: the steps below count from order 1.
start_service "$bin/orders-service" run --components api
create_sql=loadtest/pgbench/create-order.sql
create_statement=$(with_cores "CreateOrder's statement" \
  pgbench -n -M prepared -c 16 -j 2 -T "$seconds" -f "$create_sql" "$DATABASE_URL" | tps)
sql "DROP TRIGGER outbox_notify ON outbox"
create_no_notify=$(with_cores "the same, no NOTIFY trigger" \
  pgbench -n -M prepared -c 16 -j 2 -T "$seconds" -f "$create_sql" "$DATABASE_URL" | tps)
sql "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
sql "TRUNCATE outbox, order_versions, order_items, orders; ALTER SEQUENCE orders_id_seq RESTART"
echo "pgbench simple-update:                 $simple transactions/s"
echo "pgbench CreateOrder's statement:       $create_statement transactions/s"
echo "  the same without the NOTIFY trigger: $create_no_notify transactions/s"

# The yardstick moves with the machine (this VM's CPU is shared: TPC-B-like runs minutes apart gave
# 3,415 to 6,156 transactions/s), so each round measures it right before the calls it is compared with,
# and the ratios are the medians of the rounds'.
echo "== $rounds rounds back to back: pgbench TPC-B-like, then ghz against the API alone (16 connections, 16 calls in flight)"
for round in $(seq 1 "$rounds"); do
  round_tpcb=$(with_cores "round $round, TPC-B-like" pgbench -n -c 16 -j 2 -T "$seconds" "$pgbench_url" | tps)
  before=$(sql "SELECT coalesce(max(id), 0) FROM orders")
  ghz_call "$report_dir/create-$round.json" -z "${seconds}s" --call orders.v1.OrderService/CreateOrder \
    -d '{"client_id": 1, "idempotency_key": "{{newUUID}}", "items": [{"sku_id": 10, "quantity": 2, "price": {"currency_code": "EUR", "units": 5}}]}'
  read -r c_rps c_p99 c_bad c_errors < <(ghz_summary <"$report_dir/create-$round.json")
  after=$(sql "SELECT coalesce(max(id), 0) FROM orders")
  # CREATED -> PAID of each order this round created (one instance: its ids are consecutive).
  python3 -c 'import json, sys; first, last = map(int, sys.argv[1:])
print(json.dumps([{"order_id": i, "status": "ORDER_STATUS_PAID"} for i in range(first + 1, last + 1)]))' \
    "$before" "$after" >"$report_dir/paid-$round.json"
  ghz_call "$report_dir/update-$round.json" -n "$((after - before))" --data-file "$report_dir/paid-$round.json" \
    --call orders.v1.OrderService/UpdateOrderStatus
  read -r u_rps u_p99 u_bad u_errors < <(ghz_summary <"$report_dir/update-$round.json")
  echo "round $round: pgbench TPC-B-like $round_tpcb transactions/s"
  echo "  CreateOrder:       $c_rps requests/s ($(python3 -c "print(f'{$c_rps / $round_tpcb:.2f}')")x), p99 $c_p99 ms, $c_bad not OK: $c_errors"
  echo "    $(cat "$report_dir/create-$round.json.cores")"
  echo "  UpdateOrderStatus: $u_rps requests/s ($(python3 -c "print(f'{$u_rps / $round_tpcb:.2f}')")x), p99 $u_p99 ms, $u_bad not OK: $u_errors"
  echo "    $(cat "$report_dir/update-$round.json.cores")"
  echo "$round_tpcb $c_rps $u_rps" >>"$report_dir/rounds"
done
stop_service
# The medians: TPC-B-like, CreateOrder, UpdateOrderStatus, and the two ratios.
read -r tpcb create_rps update_rps create_ratio update_ratio < <(python3 -c '
import statistics, sys
rounds = [list(map(float, line.split())) for line in open(sys.argv[1])]
median = lambda values: statistics.median(values)
print(*(f"{median(column):.0f}" for column in zip(*rounds)),
      f"{median([c / t for t, c, _ in rounds]):.2f}", f"{median([u / t for t, _, u in rounds]):.2f}")' \
  "$report_dir/rounds")

echo "== the relay alone, draining the outbox"
backlog=$(sql "SELECT count(*) FROM outbox")
started=$(date +%s.%N)
start_service "$bin/orders-service" run --components relay
until [ "$(sql "SELECT count(*) FROM outbox")" -eq 0 ]; do sleep 0.2; done
drained=$(date +%s.%N)
stop_service
relay_rate=$(python3 -c "print(f'{$backlog / ($drained - $started):.0f}')")
echo "relay:                  $backlog events in $(python3 -c "print(f'{$drained - $started:.1f}')") s: $relay_rate events/s (process start included)"

echo "== the updater alone, a new group reading the whole topic"
export UPDATER_GROUP="write-path-$(date +%s)"
total=$backlog
started=$(date +%s.%N)
start_service env METRICS_ADDR=127.0.0.1:50074 "$bin/orders-service" run --components updater
# Until the group committed everything (it commits every second).
until [ "$("$bin/stack" lag --group "$UPDATER_GROUP")" -eq 0 ]; do sleep 0.2; done
applied=$(date +%s.%N)
# That the updater did the work, by its own count: every event through the compare-and-set, with the
# outcome of each. Nothing read the orders, so no entry exists and every outcome is "absent": the
# updater refreshes entries readers filled, it never creates one (docs/CONSISTENCY.md).
outcomes=$(python3 -c '
import re, sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:50074/metrics", timeout=5).read().decode()
counts = {m[0]: int(float(m[1])) for m in re.findall(r"^orders_updater_events_total\{result=\"(\w+)\"\} (\S+)$", text, re.M)}
print(sum(counts.values()), " ".join(f"{k}={v}" for k, v in sorted(counts.items())))')
stop_service
updater_rate=$(python3 -c "print(f'{$total / ($applied - $started):.0f}')")
echo "updater:                $total events in $(python3 -c "print(f'{$applied - $started:.1f}')") s: $updater_rate events/s (process start and group join included)"
echo "  events through the compare-and-set, by outcome: ${outcomes#* } (${outcomes%% *} of $total)"
[ "${outcomes%% *}" -ge "$total" ] || { echo "write-path: the updater did not apply every event" >&2; exit 1; }

echo "== goose against the whole service (16 users, ${seconds} s each)"
out="${LOADTEST_OUT:-target/loadtest}"
mkdir -p "$out"
goose_run() { # $1 weights, $2 the RPC: prints its summary (loadtest/goose_summary.py)
  "$bin/loadtest" -H "http://$GRPC_ADDR" --redis-url "$REDIS_URL" --weights "$1=1" --probe-rate 0 \
    -u 16 -r 16 -t "${seconds}s" --quiet --report-file "$out/write-path-$1.json" >/dev/null 2>&1
  python3 loadtest/goose_summary.py "$out/write-path-$1.json" "$2"
}
# After the drains, so that the relay and updater measured above had the ghz steps' events alone; here
# they run beside the API and carry goose's writes as they come.
start_service "$bin/orders-service" run
read -r goose_create_rps goose_create_bad _ _ goose_create_p99 _ < <(goose_run creates CreateOrder)
read -r goose_update_rps goose_update_bad _ _ goose_update_p99 _ < <(goose_run status-updates UpdateOrderStatus)
stop_service
echo "CreateOrder (goose):       $goose_create_rps requests/s, p99 $goose_create_p99 ms, $goose_create_bad not OK"
echo "UpdateOrderStatus (goose): $goose_update_rps requests/s, p99 $goose_update_p99 ms, $goose_update_bad not OK"

echo "== ratios (same run)"
echo "CreateOrder / pgbench TPC-B-like:       $create_ratio (median of $rounds rounds)"
echo "UpdateOrderStatus / pgbench TPC-B-like: $update_ratio (median of $rounds rounds)"
python3 -c "print(f'CreateOrder / its statement in pgbench: {$create_rps / $create_statement:.2f}')"
python3 -c "print(f'goose CreateOrder / pgbench TPC-B-like:       {$goose_create_rps / $tpcb:.2f}')"
python3 -c "print(f'goose UpdateOrderStatus / pgbench TPC-B-like: {$goose_update_rps / $tpcb:.2f}')"
