#!/usr/bin/env bash
# Installs what the project needs on a Debian machine, and only what is missing: a second run takes
# seconds. Used by ci/test.sh and ci/run.sh; safe to run by hand.
#
#   apt:   postgresql (server), redis-server, maven, a JDK >= 17, a C toolchain for librdkafka, and
#          kcat (the consumer benchmark's outside anchor)
#   maven: the Apache Kafka broker jars (ci/kafka/pom.xml) into ~/.cache/orders-cache/kafka-<version>,
#          Kafka's tools (ci/kafka/tools/pom.xml) into ~/.cache/orders-cache/kafka-tools-<version>
#   go:    grpcurl, for exploring the API through server reflection
#   cargo: cargo-nextest, the test runner
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $*"; fi
}

# --- Debian packages -----------------------------------------------------------------------------
missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then missing+=(openjdk-17-jre-headless); fi
for pkg in build-essential pkg-config zlib1g-dev; do have_pkg "$pkg" || missing+=("$pkg"); done
command -v kcat >/dev/null 2>&1 || missing+=(kcat)

if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing[*]} and this is not a Debian-like system: install them with your package manager"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq || die "apt-get update failed: check the network, then run: apt-get update"
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install failed; run it by hand to see why: apt-get install -y ${missing[*]}"
fi
# Debian's postgresql package starts a cluster of its own on port 5432; the tests never use it.

# --- Kafka jars ----------------------------------------------------------------------------------
# Same directories the harness uses (harness/src/stack/tools.rs: kafka_libs_dir, kafka_tools_dir).
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/ci/kafka/pom.xml")"
[ -n "$kafka_version" ] || die "no <kafka.version> in ci/kafka/pom.xml"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/orders-cache"

# fetch_jars WHAT POM DIR: the runtime dependencies of POM into DIR, once (DIR/.complete says done).
fetch_jars() {
  local what="$1" pom="$2" dir="$3"
  [ -f "$dir/.complete" ] && return 0
  say "downloading $what $kafka_version jars into $dir (maven)"
  local staging="$dir.partial-$$"
  rm -rf "$staging"
  mvn -q -B -f "$pom" dependency:copy-dependencies -Dkafka.version="$kafka_version" \
      -DincludeScope=runtime -DoutputDirectory="$staging" ||
    die "could not download the $what jars; retry with: mvn -f ${pom#"$root/"} -Dkafka.version=$kafka_version dependency:copy-dependencies"
  touch "$staging/.complete"
  mkdir -p "$(dirname "$dir")"
  mv -T "$staging" "$dir" 2>/dev/null || rm -rf "$staging"
}
fetch_jars "Apache Kafka" "$root/ci/kafka/pom.xml" "${KAFKA_LIBS:-$cache/kafka-$kafka_version}"
fetch_jars "Kafka tools" "$root/ci/kafka/tools/pom.xml" "${KAFKA_TOOLS_LIBS:-$cache/kafka-tools-$kafka_version}"

# --- grpcurl -------------------------------------------------------------------------------------
gobin="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
if ! command -v grpcurl >/dev/null 2>&1 && [ ! -x "$gobin/grpcurl" ]; then
  if command -v go >/dev/null 2>&1; then
    say "installing grpcurl (go install)"
    go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3 ||
      die "go install of grpcurl failed; retry with: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3"
  else
    say "warning: no Go toolchain, so no grpcurl (only the reflection walkthrough needs it; apt-get install golang)"
  fi
fi

# --- cargo-nextest --------------------------------------------------------------------------------
# The test runner of ci/test.sh (.config/nextest.toml). Built from crates.io the first time (a few
# minutes on two cores), found at once after that.
nextest_version=0.9.151
if ! cargo nextest --version 2>/dev/null | grep -q "^cargo-nextest $nextest_version"; then
  say "installing cargo-nextest $nextest_version (cargo install --locked)"
  cargo install --locked --quiet "cargo-nextest@$nextest_version" ||
    die "cargo install of cargo-nextest failed; retry with: cargo install --locked cargo-nextest@$nextest_version"
fi

say "ready (postgres, redis-server, kcat, java $(java_major), kafka $kafka_version jars and tools, cargo-nextest $nextest_version)"
