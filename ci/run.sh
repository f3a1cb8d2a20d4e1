#!/usr/bin/env bash
# The run command of the README: installs what is missing, then starts PostgreSQL, Redis and Kafka as
# local processes and prints their endpoints; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
exec cargo run -q -p harness --bin stack -- up "$@"
