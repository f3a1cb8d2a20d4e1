#!/usr/bin/env bash
# A long load run against the service in a process of its own (release build) on a fresh local stack:
# the load test reaches it over gRPC (--host) and samples its resident memory (--service-pid), so the
# figures are the service's alone, not the load generator's. Installs what is missing (ci/setup.sh).
# Reports go to target/loadtest/soak.{html,md,json} (or $LOADTEST_OUT).
#
# Default load: 10 minutes, 8 users on the mix throttled to 500 requests/s in all, and the staleness
# probe at a steady 200 updates/s. Arguments, if any, replace that load (`loadtest --help` lists them):
#   bash loadtest/soak.sh -t 2m -u 16 --weights warm-reads=3,status-updates=1 --throttle-requests 1000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
cargo build --release -q -p harness --bin stack -p service --bin orders-service -p loadtest --bin loadtest
bin="${CARGO_TARGET_DIR:-target}/release"

# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack "$bin/stack"
export GRPC_ADDR="${SOAK_GRPC_ADDR:-127.0.0.1:50061}" METRICS_ADDR="${SOAK_METRICS_ADDR:-127.0.0.1:9465}"
export RUST_LOG="${RUST_LOG:-warn}"
"$bin/orders-service" &
service_pid=$!
stop_all() {
  kill -TERM "$service_pid" 2>/dev/null || true
  wait "$service_pid" 2>/dev/null || true
  stop_stack
}
trap stop_all EXIT

for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/${GRPC_ADDR%:*}/${GRPC_ADDR##*:}") 2>/dev/null && break
  kill -0 "$service_pid" 2>/dev/null || { echo "soak: the service did not start" >&2; exit 1; }
  sleep 0.2
done

if [ "$#" -eq 0 ]; then
  set -- -t 10m -u 8 --weights mix=1 --throttle-requests 500 --probe-rate 200
fi
out="${LOADTEST_OUT:-target/loadtest}"
mkdir -p "$out"
"$bin/loadtest" --host "http://$GRPC_ADDR" --redis-url "$REDIS_URL" --service-pid "$service_pid" \
  --report-file "$out/soak.html" --report-file "$out/soak.md" --report-file "$out/soak.json" "$@"
