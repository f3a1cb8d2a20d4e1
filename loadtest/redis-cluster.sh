#!/usr/bin/env bash
# Reads from a Redis Cluster against reads from one Redis, in one run (loopback only, every step bounded
# in time). Installs what is missing (ci/setup.sh). Each round starts a fresh local stack (one Redis, or
# three masters and three replicas), orders-service (release build, every component) on it, then goose:
#
#   warm GetOrder         --weights warm-reads=1   (one key: one GET)
#   GetOrders of 50 ids   --weights batch-reads=1  (one MGET on one Redis; one per slot on the cluster)
#
# ROUNDS rounds (default 2) alternate the two stacks, so that a drift of the machine shows as a spread
# rather than as a difference. Prints, per step, the calls per second and their p50/p99 latency; goose's
# reports go to target/loadtest/redis-*.
# Usage: bash loadtest/redis-cluster.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
cargo build --release -q -p harness --bin stack -p service --bin orders-service -p loadtest --bin loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
out="${LOADTEST_OUT:-target/loadtest}"
mkdir -p "$out"
seconds="${CLUSTER_SECONDS:-20}"
users="${CLUSTER_USERS:-8}"

# shellcheck source=ci/stack.sh
source ci/stack.sh
# One round on one stack: $1 the round, $2 its name (single or cluster), the rest `stack up` arguments.
round() {
  local round=$1 name=$2
  shift 2
  (
    start_stack "$bin/stack" "$@"
    unset METRICS_ADDR
    export RUST_LOG=warn GRPC_ADDR=127.0.0.1:50073
    start_service "$bin/orders-service" run
    for step in warm-reads:"GetOrder (warm)" batch-reads:GetOrders; do
      local weights=${step%%:*} rpc=${step#*:} report="$out/redis-$name-$round-${step%%:*}"
      "$bin/loadtest" -H "http://$GRPC_ADDR" --redis-url "$REDIS_URL" --weights "$weights=1" --batch-size 50 \
        --probe-rate 0 -u "$users" -r "$users" -t "${seconds}s" --quiet \
        --report-file "$report.json" --report-file "$report.html" >/dev/null
      local served failed shed p50 p99 max
      read -r served failed shed p50 p99 max < <(python3 loadtest/goose_summary.py "$report.json" "$rpc")
      printf 'round %s %-8s %-16s %7s calls/s (%s not OK), p50 %s ms, p99 %s ms\n' \
        "$round" "$name" "$rpc" "$served" "$failed" "$p50" "$p99"
    done
  )
}

for r in $(seq 1 "${ROUNDS:-2}"); do
  round "$r" single
  round "$r" cluster --redis-cluster
done
