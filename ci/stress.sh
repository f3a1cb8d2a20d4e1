#!/usr/bin/env bash
# Runs chosen tests many times in a row (cargo-nextest's --stress-count), through ci/test.sh (same
# shared stack, same scheduling, no retries), optionally beside a CPU hog that keeps one of the two
# cores busy the whole time: a timing flake shows up here instead of in CI.
#
#   bash ci/stress.sh [--count N] [--hog] FILTERSET
#   bash ci/stress.sh --count 20 --hog 'binary_id(service::api) & test(/^redis_cluster::/)'
#
# Every iteration must pass; the first failure stops the run (NEXTEST_PROFILE=default) and leaves its
# servers' logs under target/test-logs/<binary>/<test>/stress-<n>/. The counts are in the JUnit report
# (target/nextest/default/junit.xml) and in nextest's summary line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
count=20 hog=false filter=
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count="$2"; shift 2 ;;
    --hog) hog=true; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) [ -z "$filter" ] || { echo "stress: one filterset, quoted" >&2; exit 2; }; filter="$1"; shift ;;
  esac
done
[ -n "$filter" ] || { echo "usage: bash ci/stress.sh [--count N] [--hog] FILTERSET" >&2; exit 2; }

if $hog; then
  # One core spinning at full speed, for at most 4 hours, stopped when this script ends.
  timeout 4h taskset -c 0 sh -c 'while :; do :; done' &
  hog_pid=$!
  trap 'kill "$hog_pid" 2>/dev/null || true' EXIT
  echo "stress: a CPU hog runs on core 0 (pid $hog_pid)" >&2
fi
started=$SECONDS
NEXTEST_PROFILE=default bash ci/test.sh --stress-count "$count" -E "$filter"
echo "stress: $count runs of $filter passed in $((SECONDS - started)) s (hog: $hog)" >&2
