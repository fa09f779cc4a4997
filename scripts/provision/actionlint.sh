#!/usr/bin/env bash
# actionlint, which checks the GitHub Actions workflows in .github/workflows/ (syntax,
# expressions, action inputs, runner labels), and shellcheck, which actionlint runs on
# the `run:` scripts (the Debian package, installed when missing, as
# scripts/provision/postgres.sh does for PostgreSQL). Prints actionlint's path as its last
# line (stdout).
set -euo pipefail
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"

if ! command -v shellcheck >/dev/null 2>&1; then
  echo "provision/actionlint: shellcheck not found; installing the Debian shellcheck package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends shellcheck >&2
fi

exec "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh" actionlint \
  github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION"
