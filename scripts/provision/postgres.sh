#!/usr/bin/env bash
# A PostgreSQL server for the tests, on 127.0.0.1:${PORTCULLIS_PG_PORT:-54329} only, with a
# `portcullis_test` database. Idempotent and cwd-independent:
#   - a server already answering on the port is used as is;
#   - otherwise the Debian `postgresql` package is installed if initdb/pg_ctl are missing,
#     a cluster is created under $REPO/.tools/pgdata (owned by the `postgres` OS user, since
#     PostgreSQL refuses to run as root; trust authentication, loopback only: test use only)
#     and started.
# Prints `export PORTCULLIS_TEST_DATABASE_URL=...` on stdout (logs go to stderr), so
#   eval "$(scripts/provision/postgres.sh)"
# sets the variable the tests read.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PORT="${PORTCULLIS_PG_PORT:-54329}"
DATA="$REPO/.tools/pgdata"
LOG="$REPO/.tools/postgres.log"
DB=portcullis_test
URL="postgres://postgres@127.0.0.1:$PORT/$DB"

log() { echo "provision/postgres: $*" >&2; }

# Runs a command as the postgres OS user when we are root.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

find_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1; }

if ! BIN="$(find_bin)"; then
  log "initdb/pg_ctl not found; installing the Debian postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends postgresql >&2
  BIN="$(find_bin)" || { log "postgresql installed but initdb/pg_ctl still missing"; exit 1; }
fi

if ! ready; then
  if ! id postgres >/dev/null 2>&1; then
    log "the postgres OS user is missing (install the postgresql package)"
    exit 1
  fi
  mkdir -p "$REPO/.tools"
  # The postgres user must be able to reach the data directory.
  chmod o+x "$REPO" "$REPO/.tools" 2>/dev/null || true
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "creating a cluster in $DATA"
    rm -rf "$DATA"
    mkdir -p "$DATA"
    chown postgres: "$DATA" 2>/dev/null || true
    chmod 700 "$DATA"
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres -A trust --no-instructions >&2
  fi
  touch "$LOG"
  chown postgres: "$LOG" 2>/dev/null || true
  log "starting PostgreSQL on 127.0.0.1:$PORT"
  as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k /tmp -c max_connections=200 -c fsync=off" start >&2
  ready || { log "PostgreSQL did not start; see $LOG"; exit 1; }
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
if [ "$("${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >&2
fi
log "ready: $URL"
echo "export PORTCULLIS_TEST_DATABASE_URL=$URL"
