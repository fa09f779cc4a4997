#!/usr/bin/env bash
# nginx, for the forward-auth tests: a real `auth_request` in front of an upstream. Uses the
# nginx on PATH or /usr/sbin/nginx; otherwise installs the Debian `nginx` package (the
# service it would start is not started here: the tests run their own nginx on 127.0.0.1
# with a config of their own). Prints the binary's path as its last line.
set -euo pipefail

log() { echo "provision/nginx: $*" >&2; }

find_nginx() {
  command -v nginx 2>/dev/null && return 0
  [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx && return 0
  return 1
}

if ! path="$(find_nginx)"; then
  log "nginx not found; installing the Debian nginx package"
  "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" nginx
  path="$(find_nginx)" || { log "nginx installed but not found"; exit 1; }
fi
log "using $path"
echo "$path"
