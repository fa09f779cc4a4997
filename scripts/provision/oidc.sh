#!/usr/bin/env bash
# Install the test OpenID provider's npm dependencies in $REPO/tests/oidc from its
# lockfile (npm ci). Idempotent and cwd-independent: npm runs only when
# node_modules/oidc-provider is missing or not the version pinned in package.json.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$REPO/tests/oidc"

log() { echo "provision/oidc: $*" >&2; }

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "$tool not found (install Node.js with npm, e.g. apt-get install nodejs npm)"
    exit 1
  fi
done

# Exits 0 when the installed oidc-provider is the pinned version.
up_to_date() {
  (cd "$DIR" && node -e '
    const fs = require("fs");
    const f = "node_modules/oidc-provider/package.json";
    const pinned = require("./package.json").dependencies["oidc-provider"];
    process.exit(fs.existsSync(f) && require("./" + f).version === pinned ? 0 : 1);
  ')
}

if up_to_date; then
  log "oidc-provider already installed"
  exit 0
fi

log "npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund >&2)
up_to_date || { log "oidc-provider still missing after npm ci"; exit 1; }
