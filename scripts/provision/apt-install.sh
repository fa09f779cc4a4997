#!/usr/bin/env bash
# Installs Debian packages for the tests without starting the services they ship
# (policy-rc.d answers 101, "action not allowed", while they install): the tests run their
# own instances on 127.0.0.1. Usage: scripts/provision/apt-install.sh PACKAGE...
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update >&2
apt-get install -y --no-install-recommends "$@" >&2
