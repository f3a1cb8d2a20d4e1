#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs every test of the workspace
# against real PostgreSQL, Redis and Kafka with cargo-nextest (.config/nextest.toml: a process per
# test, tests with servers of their own one at a time, no retries, a JUnit report in
# target/nextest/<profile>/junit.xml).
#
# Light tests share one stack for the whole run, started here (harness `stack up`) and named to them
# by HARNESS_SHARED_STACK; tests that stop, kill or wipe servers start their own. A failed test leaves
# its servers' logs under target/test-logs/<binary>/<test>/, and this script adds the shared stack's
# there too.
#
#   bash ci/test.sh                          # everything (profile ci: no fail-fast)
#   bash ci/test.sh -E 'binary_id(service::api)'   # any nextest arguments: a filter, --no-fail-fast, ...
#   NEXTEST_PROFILE=default bash ci/test.sh  # stop at the first failure
#   CONSISTENCY_SEED=N bash ci/test.sh -E 'binary_id(harness::consistency)'   # replay generated scenarios
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
export NEXTEST_PROFILE="${NEXTEST_PROFILE:-ci}"

cargo build -q -p harness --bin stack
# shellcheck source=ci/stack.sh
source ci/stack.sh
start_stack ./target/debug/stack
# The tests find the shared stack through this file alone: the service processes they start read
# DATABASE_URL and friends, which must not point them at it by accident.
export HARNESS_SHARED_STACK="$STACK_ENDPOINTS"
unset DATABASE_URL REDIS_URL KAFKA_BROKERS

status=0
cargo nextest run --workspace "$@" || status=$?
if [ "$status" -ne 0 ]; then
  shared_dir="$(sed -n 's/^# directory //p' "$STACK_ENDPOINTS")"
  if [ -n "$shared_dir" ] && [ -d "$shared_dir" ]; then
    mkdir -p target/test-logs/shared-stack
    # Not Kafka's data/: its partition segments end in .log too.
    (cd "$shared_dir" && find . -name data -prune -o -name '*.log' -exec cp --parents {} "$OLDPWD/target/test-logs/shared-stack/" \;)
  fi
  echo "test: failed; servers' logs of the failed tests and of the shared stack are in target/test-logs/" >&2
  exit "$status"
fi
# nextest does not run doctests.
cargo test -q --workspace --doc
