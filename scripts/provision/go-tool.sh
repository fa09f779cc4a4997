#!/usr/bin/env bash
# Install a Go command at a pinned version into $REPO/.tools/bin with `go install`
# (a Go module, fetched through the Go module proxy; the module cache keeps it for the
# next build). Used by the per-tool provisioning scripts in this directory.
#
#   scripts/provision/go-tool.sh NAME PACKAGE VERSION
#
# Idempotent and cwd-independent: a stamp file records the installed version, so a second
# run with the same version does nothing. Prints the binary's path as its last line (stdout).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="$REPO/.tools/bin"
name="$1" pkg="$2" version="$3"
stamp="$BIN_DIR/.$name.version"

log() { echo "provision/$name: $*" >&2; }

if [[ -x "$BIN_DIR/$name" && "$(cat "$stamp" 2>/dev/null)" == "$pkg@$version" ]]; then
  log "using $BIN_DIR/$name ($version)"
  echo "$BIN_DIR/$name"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  log "go not found; cannot install $pkg@$version (install Go 1.26 or newer)"
  exit 1
fi
mkdir -p "$BIN_DIR"
log "installing $pkg@$version with go install"
(cd "$BIN_DIR" && GOBIN="$BIN_DIR" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" "$pkg@$version")
echo "$pkg@$version" > "$stamp"
log "installed $BIN_DIR/$name"
echo "$BIN_DIR/$name"
