#!/usr/bin/env bash
# buildah (Debian package), which builds and runs the container image the tests check
# (tests/image). Installs it when missing; prints its path as its last line.
set -euo pipefail
if ! command -v buildah >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "provision/buildah: installing buildah (Debian)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >&2
  else
    echo "provision/buildah: buildah not found and cannot be installed here" >&2
    exit 1
  fi
fi
command -v buildah
