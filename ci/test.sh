#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs every test of the workspace
# against real PostgreSQL, Redis and Kafka (the harness starts private instances for each test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
cargo test --workspace "$@"
