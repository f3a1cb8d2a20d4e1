#!/usr/bin/env bash
# Installs what the project needs on a Debian machine, and only what is missing: a second run takes
# seconds. Used by ci/test.sh and ci/run.sh; safe to run by hand.
#
#   apt:   postgresql (server), redis-server, maven, a JDK >= 17, a C toolchain for librdkafka
#   maven: the Apache Kafka broker jars (ci/kafka/pom.xml) into ~/.cache/orders-cache/kafka-<version>
#   go:    grpcurl, for exploring the API through server reflection
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

# --- Kafka broker jars ---------------------------------------------------------------------------
# Same directory the harness uses (harness/src/stack/tools.rs: kafka_libs_dir).
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/ci/kafka/pom.xml")"
[ -n "$kafka_version" ] || die "no <kafka.version> in ci/kafka/pom.xml"
kafka_libs="${KAFKA_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/orders-cache/kafka-$kafka_version}"
if [ ! -f "$kafka_libs/.complete" ]; then
  say "downloading Apache Kafka $kafka_version jars into $kafka_libs (maven)"
  staging="$kafka_libs.partial-$$"
  rm -rf "$staging"
  mvn -q -B -f "$root/ci/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$staging" ||
    die "could not download the Kafka jars; retry with: mvn -f ci/kafka/pom.xml dependency:copy-dependencies"
  touch "$staging/.complete"
  mkdir -p "$(dirname "$kafka_libs")"
  mv -T "$staging" "$kafka_libs" 2>/dev/null || rm -rf "$staging"
fi

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

say "ready (postgres, redis-server, java $(java_major), kafka $kafka_version jars)"
