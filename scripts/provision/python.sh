#!/usr/bin/env bash
# Create or update the test virtualenv at $REPO/.tools/venv from requirements-test.txt.
#
# Idempotent and cwd-independent: pip runs only when requirements-test.txt (or the
# Python interpreter) changed since the last successful install, tracked by a stamp file
# holding their hash. Prints the venv's python path as its last line (stdout).
# PYTHON picks the interpreter that builds the venv (default: python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.tools/venv"
REQ="$REPO/requirements-test.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { echo "provision/python: $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "$PYTHON not found"
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  log "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON" -m venv "$VENV"; then
    log "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
    exit 1
  fi
fi

# The stamp covers the requirements and the venv interpreter's version.
want="$( { cat "$REQ"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [[ "$want" != "$have" ]]; then
  log "installing $(basename "$REQ") into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$want" > "$STAMP"
else
  log "$VENV is up to date"
fi
echo "$VENV/bin/python"
