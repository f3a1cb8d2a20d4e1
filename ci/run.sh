#!/usr/bin/env bash
# The run command of the README: installs what is missing, starts PostgreSQL, Redis and Kafka as local
# processes (harness `stack up`), then the orders service on them, in the foreground. Ctrl-C stops both.
#
#   bash ci/run.sh                   # one Redis
#   bash ci/run.sh --redis-cluster   # the cache on a Redis Cluster (three masters, three replicas)
#
#   GRPC_ADDR     (default 127.0.0.1:50051)   where the gRPC API listens
#   METRICS_ADDR  (default 127.0.0.1:9464)    Prometheus metrics at /metrics
#   RUST_LOG      (default info)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stack_args=()
for arg in "$@"; do
  case "$arg" in
    --redis-cluster) stack_args+=(--redis-cluster) ;;
    *) echo "usage: bash ci/run.sh [--redis-cluster]" >&2; exit 2 ;;
  esac
done
bash ci/setup.sh
cargo build -q -p harness --bin stack -p service --bin orders-service

# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack ./target/debug/stack "${stack_args[@]}"
export GRPC_ADDR="${GRPC_ADDR:-127.0.0.1:50051}" METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}"

echo "run: stack ready; to reach it from another shell:"
print_stack_endpoints
echo "run: orders-service on $GRPC_ADDR (metrics on http://$METRICS_ADDR/metrics); Ctrl-C stops everything"
./target/debug/orders-service &
service_pid=$!
# Ctrl-C in a terminal reaches every process of the group; a signal sent to this script alone (kill,
# timeout) is passed on, so the service shuts down gracefully either way, then the stack.
trap 'kill -TERM "$service_pid" 2>/dev/null || true' INT TERM
status=0
wait "$service_pid" || status=$?
if kill -0 "$service_pid" 2>/dev/null; then wait "$service_pid" || status=$?; fi
exit "$status"
