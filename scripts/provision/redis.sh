#!/usr/bin/env bash
# redis-server, for the shared rate-limit tests (tests/it/rate_limits.rs): each test runs
# its own Redis on 127.0.0.1 and stops it by PID. Uses the redis-server on PATH or
# /usr/bin/redis-server; otherwise installs the Debian `redis-server` package (the service
# it would start is not started here). Prints the binary's path as its last line.
set -euo pipefail

log() { echo "provision/redis: $*" >&2; }

find_redis() {
  command -v redis-server 2>/dev/null && return 0
  [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server && return 0
  return 1
}

if ! path="$(find_redis)"; then
  log "redis-server not found; installing the Debian redis-server package"
  "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" redis-server
  path="$(find_redis)" || { log "redis-server installed but not found"; exit 1; }
fi
log "using $path"
echo "$path"
