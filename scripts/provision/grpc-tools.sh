#!/usr/bin/env bash
# Install the gRPC load/debug tools used by scripts/bench.py into $REPO/.tools/bin:
#   ghz      (github.com/bojand/ghz/cmd/ghz)            load generator
#   grpcurl  (github.com/fullstorydev/grpcurl/cmd/grpcurl) ad-hoc gRPC client
# Idempotent and cwd-independent: `go install` runs only for a tool that is missing or
# not the pinned version (checked with `go version -m` on the installed binary).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$REPO/.tools/bin"

# Pinned versions (latest tags on proxy.golang.org when this was written).
GHZ_VERSION="v0.121.0"
GRPCURL_VERSION="v1.9.4"

log() { echo "provision/grpc-tools: $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "go not found (install Go >= 1.23, e.g. from https://go.dev/dl/)"
  exit 1
fi

# installed_version BINARY -> prints the main module version embedded in the binary, or nothing.
installed_version() {
  [[ -x "$1" ]] || return 0
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

# ensure NAME PACKAGE VERSION
ensure() {
  local name="$1" pkg="$2" version="$3" have
  have="$(installed_version "$BIN/$name")"
  if [[ "$have" == "$version" ]]; then
    log "$name $version already installed"
    return 0
  fi
  log "installing $name $version (found: ${have:-none}) into $BIN"
  mkdir -p "$BIN"
  GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install "$pkg@$version" >&2
  have="$(installed_version "$BIN/$name")"
  if [[ "$have" != "$version" ]]; then
    log "$name: expected $version after install, found ${have:-none}"
    exit 1
  fi
}

ensure ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"
ensure grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
