#!/usr/bin/env bash
# Install the test OpenID provider's npm dependencies (oidc-provider, and the oauth4webapi
# client the DPoP test uses) in $REPO/tests/oidc from its lockfile (npm ci). Idempotent and
# cwd-independent: npm runs only when a dependency is missing or not the pinned version.
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

# Exits 0 when every installed dependency is its pinned version.
up_to_date() {
  (cd "$DIR" && node -e '
    const fs = require("fs");
    const pinned = require("./package.json").dependencies;
    const ok = Object.entries(pinned).every(([name, version]) => {
      const f = `node_modules/${name}/package.json`;
      return fs.existsSync(f) && require("./" + f).version === version;
    });
    process.exit(ok ? 0 : 1);
  ')
}

if up_to_date; then
  log "oidc-provider and oauth4webapi already installed"
  exit 0
fi

log "npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund >&2)
up_to_date || { log "dependencies still missing after npm ci"; exit 1; }
