#!/usr/bin/env bash
# Caddy (github.com/caddyserver/caddy/v2/cmd/caddy), for the forward-auth tests: a real
# `forward_auth` in front of an upstream. Installed with `go install` into $REPO/.tools/bin
# (see go-tool.sh). Prints the binary's path as its last line.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh" caddy github.com/caddyserver/caddy/v2/cmd/caddy v2.11.9
