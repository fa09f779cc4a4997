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
  export DEBIAN_FRONTEND=noninteractive
  # No service start during installation (policy-rc.d 101: "action not allowed").
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get update >&2
  apt-get install -y --no-install-recommends redis-server >&2
  [ "$created_policy" = 1 ] && rm -f "$policy"
  path="$(find_redis)" || { log "redis-server installed but not found"; exit 1; }
fi
log "using $path"
echo "$path"
