#!/usr/bin/env bash
# One load-test run on the local stack: installs what is missing (ci/setup.sh), builds in release mode,
# starts PostgreSQL, Redis, Kafka and the service, runs the load (60 s unless told otherwise), and
# writes goose's reports, completed with the staleness and memory figures, to
# target/loadtest/report.{html,md,json} (or $LOADTEST_OUT). Extra arguments go to the load test:
#   bash loadtest/run.sh -t 10m -u 16 --weights mix=4,cold-reads=1
#   bash loadtest/run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
out="${LOADTEST_OUT:-target/loadtest}"
mkdir -p "$out"
exec cargo run --release -q -p loadtest -- --start-service \
  --report-file "$out/report.html" --report-file "$out/report.md" --report-file "$out/report.json" "$@"
