#!/usr/bin/env bash
# Load shedding under overload, in one run on a fresh local stack (loopback only, every step bounded in
# time). Installs what is missing (ci/setup.sh). goose drives CreateOrder closed-loop, 30 s a step,
# against orders-service (release build, every component):
#
#   1. 16 users: enough to keep the two cores busy (the write path's saturating load)
#   2. 4 x MAX_CONCURRENT_REQUESTS (1,024) users, admission control as shipped (256 calls at a time, a
#      call waits up to 50 ms for room, then RESOURCE_EXHAUSTED)
#   3. the same 1,024 users with the limit raised above them (MAX_CONCURRENT_REQUESTS=100000): what
#      the service does without admission control
#
# goose records shed calls under their own name ("CreateOrder, shed"), so the latencies of the calls
# served are not averaged with the quick refusals. Prints, per step, the calls served and shed per
# second and the served calls' latency percentiles; goose's reports go to target/loadtest/overload-*.
# Usage: bash loadtest/overload.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
cargo build --release -q -p harness --bin stack -p service --bin orders-service -p loadtest --bin loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
out="${LOADTEST_OUT:-target/loadtest}"
mkdir -p "$out"
seconds="${OVERLOAD_SECONDS:-30}"

# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack "$bin/stack"
unset METRICS_ADDR
export RUST_LOG=warn GRPC_ADDR=127.0.0.1:50072
# One step: $1 its name, $2 users, $3 MAX_CONCURRENT_REQUESTS.
step() {
  local name=$1 users=$2 limit=$3
  start_service env MAX_CONCURRENT_REQUESTS="$limit" "$bin/orders-service" run
  "$bin/loadtest" -H "http://$GRPC_ADDR" --redis-url "$REDIS_URL" --weights creates=1 --probe-rate 0 \
    -u "$users" -r "$users" -t "${seconds}s" --quiet \
    --report-file "$out/overload-$name.json" --report-file "$out/overload-$name.html" >/dev/null
  stop_service
  local served failed shed p50 p99 max
  read -r served failed shed p50 p99 max < <(python3 loadtest/goose_summary.py "$out/overload-$name.json" CreateOrder)
  printf '%-22s %5s users, limit %6s: %6s served/s (%s not OK), %6s shed/s; served p50 %s ms, p99 %s ms, max %s ms\n' \
    "$name" "$users" "$limit" "$served" "$failed" "$shed" "$p50" "$p99" "$max"
}

step saturating 16 256
step 4x-with-admission 1024 256
step 4x-without-admission 1024 100000
