#!/usr/bin/env bash
# The release build of orders-service: what the Dockerfile runs to build the image's binary, and what CI
# runs (.ci/run), so that a build the image depends on is one CI has done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p service --bin orders-service
