#!/usr/bin/env bash
# Load benchmark baseline for Portcullis (the load half; the per-signature cost comes from
# criterion). Builds the release binary, starts two servers on loopback (one with the
# default verification cache, one with `cache: {max_ttl: 0s}` so every request pays
# signature verification), drives them with ghz at concurrency 64 and records, per scenario:
# throughput, p50/p99 latency, server CPU per request (from /proc/PID/stat) and, for the
# uncached scenarios, p99 at half the measured peak rate.
#
# Output: a Markdown table on stdout and in target/bench/results.md; raw ghz JSON in
# target/bench/*.json. Whole run: about 1.5 minutes on an idle 2-CPU machine once the binary
# is built (plus up to BENCH_QUIET_WAIT seconds if something else is using the CPUs).
#
# Knobs (environment):
#   BENCH_DURATION=10s     measured run per scenario (ghz -z)
#   BENCH_WARMUP=2s        warm-up run before each measured run (discarded)
#   BENCH_CONCURRENCY=64   ghz -c
#   BENCH_HALF_CONCURRENCY=16  ghz -c for the runs at half the peak rate
#   BENCH_CONNECTIONS=4    ghz --connections (HTTP/2 connections the workers share)
#   BENCH_PIN=1            1: server on CPU 0, ghz on CPU 1 (taskset); 0: no pinning
#   BENCH_SKIP_BUILD=0     1: use the existing target/release/portcullis
#   BENCH_OUT=target/bench output directory
#   BENCH_QUIET_MAX_PCT=10 before each measured run, wait until the machine is idle (busy
#   BENCH_QUIET_WAIT=120   below this % of one CPU), spending at most this many seconds in
#                          all; then measure anyway (the "foreign CPU %" column shows it)
#   SIG_US_ES256, SIG_US_RS256   criterion's signature-verification cost in µs; when set the
#                          table shows the expected CPU/request (floor + signature) next to
#                          the measured one.
#
# Adding a scenario is one line in the "Scenarios" section:
#   on_server cached|uncached
#   scenario NAME METHOD DATA_JSON [half]
# (`half` also runs it at half its peak rate and records p99 there.)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
HALF_CONCURRENCY="${BENCH_HALF_CONCURRENCY:-16}"
CONNECTIONS="${BENCH_CONNECTIONS:-4}"
PIN="${BENCH_PIN:-1}"
OUT="${BENCH_OUT:-$REPO/target/bench}"
BIN="$REPO/target/release/portcullis"
GHZ="$REPO/.tools/bin/ghz"
GRPCURL="$REPO/.tools/bin/grpcurl"

# The quickstart issuer (examples/quickstart.yaml); checked below so drift fails loudly.
QS_ISSUER="https://quickstart.portcullis.invalid"
QS_KID="quickstart-es256"
QS_AUD="api://quickstart"
QS_PUB="$REPO/examples/keys/quickstart-es256.pub.pem"
QS_KEY="$REPO/examples/keys/quickstart-es256.key.pem"
RS_ISSUER="https://bench-rs256.portcullis.invalid"
RS_KID="bench-rs256"

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- cleanup
TMP=""
PIDS=()      # everything started in the background, stopped on exit
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n "$TMP" ]] && rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites
for tool in cargo curl jq openssl python3 awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if [[ ! -x "$GHZ" || ! -x "$GRPCURL" ]]; then
  "$REPO/scripts/provision/grpc-tools.sh"
fi
grep -q "$QS_ISSUER" examples/quickstart.yaml && grep -q "kid: $QS_KID" examples/quickstart.yaml \
  || die "examples/quickstart.yaml no longer matches the constants at the top of $0"

NPROC="$(nproc)"
if [[ "$PIN" == 1 ]]; then
  ((NPROC >= 2)) || die "BENCH_PIN=1 needs at least 2 CPUs"
  command -v taskset >/dev/null 2>&1 || die "taskset not found (util-linux); or set BENCH_PIN=0"
  SERVER_CPUS=0
  CLIENT_CPUS="1-$((NPROC - 1))"
  SERVER_PREFIX=(taskset -c "$SERVER_CPUS")
  CLIENT_PREFIX=(taskset -c "$CLIENT_CPUS")
  SERVER_NCPU=1
  CLIENT_NCPU=$((NPROC - 1))
  PIN_DESC="server pinned to CPU $SERVER_CPUS, ghz to CPU $CLIENT_CPUS (taskset)"
else
  SERVER_PREFIX=()
  CLIENT_PREFIX=()
  SERVER_NCPU=$NPROC
  CLIENT_NCPU=$NPROC
  PIN_DESC="no pinning (server and ghz share all $NPROC CPUs)"
fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release"
  cargo build --release >&2
fi
[[ -x "$BIN" ]] || die "$BIN missing"

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/results.md
TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")"
CLK_TCK="$(getconf CLK_TCK)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- keys, configs, tokens
log "generating a throwaway RSA-2048 key in $TMP"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rs256.key.pem" 2>/dev/null
openssl pkey -in "$TMP/rs256.key.pem" -pubout -out "$TMP/rs256.pub.pem"

# API keys (file store and PostgreSQL), a Basic user, and rules for Check and Authorize.
gen_key() { # gen_key SUBJECT -> sets KEY_VALUE, KEY_YAML (file entry), KEY_SQL (INSERT)
  local out
  out="$("$BIN" keys generate --subject "$1" --scopes orders:read)"
  KEY_VALUE="$(sed -n 2p <<<"$out")"
  KEY_YAML="$(awk '/^keys:/ { on = 1; next } on && /^$/ { exit } on' <<<"$out")"
  KEY_SQL="$(grep '^INSERT' <<<"$out")"
}
gen_key bench-file
API_KEY_FILE="$KEY_VALUE"
printf 'keys:\n%s\n' "$KEY_YAML" >"$TMP/api-keys.yaml"
BASIC_PASSWORD="bench-throwaway-password"
printf '%s\n' "$BASIC_PASSWORD" | "$BIN" passwd bench >"$TMP/htpasswd"

# PostgreSQL (the test cluster from scripts/provision/postgres.sh), its own database.
PG_ENV="$("$REPO/scripts/provision/postgres.sh")"
eval "$PG_ENV"
PG_BASE="${PORTCULLIS_TEST_DATABASE_URL%/*}"
psql "$PORTCULLIS_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS portcullis_bench WITH (FORCE)" >&2
psql "$PORTCULLIS_TEST_DATABASE_URL" -qc "CREATE DATABASE portcullis_bench" >&2
PG_URL="$PG_BASE/portcullis_bench"
"$BIN" keys migrate --database-url "$PG_URL" >&2
gen_key bench-postgres
API_KEY_PG="$KEY_VALUE"
psql "$PG_URL" -qc "$KEY_SQL" >&2

# The OTLP sink the telemetry-on server exports its spans to.
"$REPO/scripts/provision/python.sh" >/dev/null
OTLP_PORT="$(free_port)"
"$REPO/.tools/venv/bin/python" "$REPO/scripts/otlp-sink.py" "$OTLP_PORT" 2>"$TMP/otlp-sink.log" &
PIDS+=("$!")

# write_config NAME CACHE_YAML TELEMETRY_YAML -> $TMP/NAME.yaml; sets GRPC_PORT[NAME], ADMIN_PORT[NAME]
declare -A GRPC_PORT ADMIN_PORT
write_config() {
  local name="$1" cache="$2" telemetry="$3"
  GRPC_PORT[$name]="$(free_port)"
  ADMIN_PORT[$name]="$(free_port)"
  cat >"$TMP/$name.yaml" <<EOF
# Derived from examples/quickstart.yaml by scripts/bench.sh ($name).
server:
  grpc_listen: 127.0.0.1:${GRPC_PORT[$name]}
  admin_listen: 127.0.0.1:${ADMIN_PORT[$name]}
issuers:
  - name: quickstart
    issuer: $QS_ISSUER
    public_key_files:
      - path: $QS_PUB
        kid: $QS_KID
        algorithm: ES256
    audiences: [$QS_AUD]
    algorithms: [ES256]
    leeway: 30s
    required_claims: [exp, sub]
  - name: bench-rs256
    issuer: $RS_ISSUER
    public_key_files:
      - path: $TMP/rs256.pub.pem
        kid: $RS_KID
        algorithm: RS256
    audiences: [$QS_AUD]
    algorithms: [RS256]
    leeway: 30s
    required_claims: [exp, sub]
api_keys:
  prefix: pcl
  file: $TMP/api-keys.yaml
  postgres: { url: env:BENCH_DATABASE_URL }
basic:
  htpasswd_file: $TMP/htpasswd
authorization:
  rules:
    - name: orders-read
      match: { http: { methods: [GET], paths: ["/orders/*"] } }
      require: { scopes_all: [orders:read] }
    - name: reports-cel
      match: { http: { paths: ["/reports/**"] } }
      require: { cel: "claims.sub == 'bench' && request.http.method == 'GET' && claims.aud == '$QS_AUD'" }
response:
  claims_to_headers: { sub: x-user-id, principal.issuer: x-auth-issuer }
cache: $cache
telemetry: $telemetry
EOF
  BENCH_DATABASE_URL="$PG_URL" "$BIN" check-config --config "$TMP/$name.yaml" >&2 || die "generated config $name is invalid"
}
QUIET_LOGS="{log_level: warn}"
write_config cached "{max_entries: 100000, max_ttl: 5m}" "$QUIET_LOGS"
write_config uncached "{max_ttl: 0s}" "$QUIET_LOGS"
write_config telemetry-on "{max_entries: 100000, max_ttl: 5m}" \
  "{log_format: json, log_level: info, metrics: true, otlp_endpoint: 'http://127.0.0.1:$OTLP_PORT'}"
write_config telemetry-sampled "{max_entries: 100000, max_ttl: 5m}" \
  "{log_format: json, log_level: info, metrics: true, trace_sample_ratio: 0.1, otlp_endpoint: 'http://127.0.0.1:$OTLP_PORT'}"
write_config telemetry-off "{max_entries: 100000, max_ttl: 5m}" "{log_level: 'off', metrics: false}"

sign() { # sign KEY ALG KID ISS
  "$BIN" token sign --key "$1" --alg "$2" --kid "$3" --iss "$4" --sub bench --aud "$QS_AUD" --scope orders:read --ttl 1h
}
TOKEN_ES256="$(sign "$QS_KEY" ES256 "$QS_KID" "$QS_ISSUER")"
TOKEN_RS256="$(sign "$TMP/rs256.key.pem" RS256 "$RS_KID" "$RS_ISSUER")"
bearer() { jq -cn --arg t "$1" '{credential: {bearer_token: $t}}'; }

# ---------------------------------------------------------------- servers
declare -A SERVER_PID
start_server() {
  local name="$1" pid
  BENCH_DATABASE_URL="$PG_URL" "${SERVER_PREFIX[@]}" "$BIN" serve --config "$TMP/$name.yaml" >"$TMP/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  SERVER_PID[$name]=$pid
  for _ in $(seq 150); do
    if curl -sf "http://127.0.0.1:${ADMIN_PORT[$name]}/readyz" >/dev/null 2>&1; then
      log "server $name ready (pid $pid, grpc :${GRPC_PORT[$name]}, admin :${ADMIN_PORT[$name]})"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 30 "$TMP/$name.log" >&2 || true
  die "server $name did not become ready"
}
start_server cached
start_server uncached
start_server telemetry-on
start_server telemetry-sampled
start_server telemetry-off

# Every credential must really authenticate, or the benchmark measures denials.
preflight() { # preflight SERVER DATA_JSON
  local resp
  resp="$("$GRPCURL" -plaintext -d "$2" "127.0.0.1:${GRPC_PORT[$1]}" portcullis.v1.Auth/Authenticate)" \
    || die "grpcurl Authenticate failed on $1"
  [[ "$(jq -r '.authenticated' <<<"$resp")" == true ]] \
    || die "token not accepted by $1: $(jq -c '.denial' <<<"$resp")"
}
api_key() { jq -cn --arg k "$1" '{credential: {api_key: $k}}'; }
basic() { jq -cn --arg u bench --arg p "$BASIC_PASSWORD" '{credential: {basic: {username: $u, password: $p}}}'; }
check() { # check METHOD PATH TOKEN
  jq -cn --arg m "$1" --arg p "$2" --arg a "Bearer $3" \
    '{attributes: {request: {http: {method: $m, path: $p, host: "bench.example", headers: {authorization: $a}}}}}'
}
authorize() { # authorize METHOD PATH TOKEN
  jq -cn --arg m "$1" --arg p "$2" --arg t "$3" \
    '{credential: {bearer_token: $t}, resource: {http_method: $m, path: $p}}'
}
preflight cached "$(bearer "$TOKEN_ES256")"
preflight uncached "$(bearer "$TOKEN_ES256")"
preflight uncached "$(bearer "$TOKEN_RS256")"
preflight cached "$(api_key "$API_KEY_FILE")"
preflight cached "$(api_key "$API_KEY_PG")"
preflight cached "$(basic)"
preflight telemetry-on "$(bearer "$TOKEN_ES256")"
preflight telemetry-off "$(bearer "$TOKEN_ES256")"
# Check and Authorize must decide as the scenario names say.
expect_decision() { # expect_decision SERVER METHOD DATA JQ_EXPR
  local resp
  resp="$("$GRPCURL" -plaintext -d "$3" "127.0.0.1:${GRPC_PORT[$1]}" "$2")" || die "grpcurl $2 failed on $1"
  jq -e "$4" <<<"$resp" >/dev/null || die "$2 on $1 did not decide as expected: $(jq -c . <<<"$resp")"
}
expect_decision cached envoy.service.auth.v3.Authorization/Check "$(check GET /orders/1 "$TOKEN_ES256")" '.okResponse'
expect_decision cached envoy.service.auth.v3.Authorization/Check "$(check GET /admin/1 "$TOKEN_ES256")" '.deniedResponse.status.code == 403'
expect_decision cached portcullis.v1.Auth/Authorize "$(authorize GET /reports/7 "$TOKEN_ES256")" '.allowed and .rule == "reports-cel"'

# ---------------------------------------------------------------- measurement helpers
proc_ticks() { # utime+stime of PID, in clock ticks (fields 14, 15; comm may contain spaces)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
machine_busy_ticks() { # all CPUs, busy ticks (total - idle - iowait) from /proc/stat
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6; exit }' /proc/stat
}

# run_ghz OUTFILE METHOD DATA [extra ghz args...]
# Runs ghz in a subshell that reaps it and writes its user+sys CPU seconds to OUTFILE.cpu
# (bash `times`: the subshell's children are just ghz, since taskset execs it).
run_ghz() {
  local out="$1" method="$2" data="$3" pid
  shift 3
  (
    trap 'kill "$p" 2>/dev/null' TERM INT
    "${CLIENT_PREFIX[@]}" "$GHZ" --insecure --call "$method" -d "$data" \
      -c "${RUN_CONCURRENCY:-$CONCURRENCY}" --connections "$CONNECTIONS" \
      --format json --output "$out" "$@" "127.0.0.1:${GRPC_PORT[$CURRENT_SERVER]}" &
    p=$!
    rc=0
    wait "$p" || rc=$?
    times >"$out.times"  # not in a pipeline: that would be a subshell without children
    awk 'NR == 2 { split($0, f, /[ms ]+/); print f[1] * 60 + f[2] + f[3] * 60 + f[4] }' "$out.times" >"$out.cpu"
    rm -f "$out.times"
    exit "$rc"
  ) &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || die "ghz failed for $method (see $out)"
}

# Busy CPU (percent of one CPU) of the whole machine over SECONDS.
machine_busy_pct() {
  local m0 m1
  m0="$(machine_busy_ticks)"; sleep "$1"; m1="$(machine_busy_ticks)"
  awk -v d=$((m1 - m0)) -v hz="$CLK_TCK" -v s="$1" 'BEGIN { printf "%.0f", d / hz / s * 100 }'
}

# Waits (within a budget shared by the whole run) until the machine is idle, so a cargo
# build or test run next door does not end up in the numbers. Sets QUIET to the last sample.
QUIET_MAX="${BENCH_QUIET_MAX_PCT:-10}"
QUIET_BUDGET="${BENCH_QUIET_WAIT:-120}"
wait_quiet() {
  local start=$SECONDS
  while :; do
    QUIET="$(machine_busy_pct 1)"
    ((QUIET <= QUIET_MAX)) && return 0
    if ((QUIET_BUDGET <= 0)); then
      log "machine busy (${QUIET}% of a CPU outside the benchmark); measuring anyway"
      return 0
    fi
    log "machine busy (${QUIET}% of a CPU outside the benchmark); waiting (budget ${QUIET_BUDGET}s)"
    sleep 2
    QUIET_BUDGET=$((QUIET_BUDGET - (SECONDS - start)))
    start=$SECONDS
  done
}

# Results, one row per scenario (associative arrays keyed by scenario name).
NAMES=()
declare -A R_SERVER R_METHOD R_RPS R_P50 R_P99 R_ERRS R_TEARDOWN R_CPU_US R_SRV_PCT R_GHZ_PCT \
  R_FOREIGN_PCT R_BOUND R_HALF_RPS R_HALF_P99 R_HALF_CPU_US R_HALF_SERVER_P99

CURRENT_SERVER=""
on_server() { CURRENT_SERVER="$1"; }

now() { date +%s.%N; }
calc() { awk "BEGIN { printf $1 }"; }  # calc '"%.1f", 1 / 3'

# measure OUTFILE METHOD DATA [ghz args...]: one ghz run against $CURRENT_SERVER. Sets
#   M_OK (OK responses), M_ERRS (non-OK, not counting the -z teardown), M_TEARDOWN,
#   M_RPS, M_P50, M_P99 (ms), M_CPU_US (server CPU µs per OK request), and over the wall
#   time of the run, in % of one CPU: M_SRV_PCT (server), M_GHZ_PCT, M_FOREIGN_PCT (rest of
#   the machine: other processes, the idle second server, kernel threads).
measure() {
  local f="$1" pid="${SERVER_PID[$CURRENT_SERVER]}" t0 t1 m0 m1 w0 w1 wall secs ghz
  wait_quiet
  t0="$(proc_ticks "$pid")"; m0="$(machine_busy_ticks)"; w0="$(now)"
  run_ghz "$@"
  t1="$(proc_ticks "$pid")"; m1="$(machine_busy_ticks)"; w1="$(now)"
  ghz="$(cat "$f.cpu")"
  wall="$(calc "\"%.3f\", $w1 - $w0")"
  secs="$(jq -r '.total / 1e9' "$f")"
  M_OK="$(jq -r '(.statusCodeDistribution // {}).OK // 0' "$f")"
  ((M_OK > 0)) || die "no successful requests (see $f)"
  # ghz -z ends by closing its connections under the requests in flight (<= -c of them).
  M_TEARDOWN="$(jq -r '[(.errorDistribution // {}) | to_entries[]
      | select(.key | test("closed network connection|client connection is closing|context canceled"))
      | .value] | add // 0' "$f")"
  M_ERRS="$(jq -r --argjson td "$M_TEARDOWN" '[(.statusCodeDistribution // {}) | to_entries[]
      | select(.key != "OK") | .value] | (add // 0) - $td' "$f")"
  M_RPS="$(calc "\"%.0f\", $M_OK / $secs")"
  M_P50="$(jq -r '[.latencyDistribution[] | select(.percentage == 50) | .latency][0] / 1e6' "$f")"
  M_P99="$(jq -r '[.latencyDistribution[] | select(.percentage == 99) | .latency][0] / 1e6' "$f")"
  M_CPU_US="$(calc "\"%.1f\", $((t1 - t0)) / $CLK_TCK * 1e6 / $M_OK")"
  M_SRV_PCT="$(calc "\"%.0f\", $((t1 - t0)) / $CLK_TCK / $wall * 100")"
  M_GHZ_PCT="$(calc "\"%.0f\", $ghz / $wall * 100")"
  M_FOREIGN_PCT="$(calc "\"%.0f\", ((x = (($((m1 - m0)) - $((t1 - t0))) / $CLK_TCK - $ghz) / $wall * 100) > 0 ? x : 0)")"
  # What limited the run: a side that used >= 90% of the CPUs it may use, else the whole
  # machine (unpinned), else neither (then latency, e.g. Nagle/delayed-ACK stalls or lock
  # waits, is the limit).
  if ((M_SRV_PCT >= 90 * SERVER_NCPU)); then M_BOUND=server
  elif ((M_GHZ_PCT >= 90 * CLIENT_NCPU)); then M_BOUND=client
  elif ((M_SRV_PCT + M_GHZ_PCT + M_FOREIGN_PCT >= 90 * NPROC)); then M_BOUND=machine
  else M_BOUND=neither; fi
  return 0
}

# Server-side decision latency from the server's own histogram: cumulative bucket counts
# (portcullis_request_duration_seconds, all surfaces) as "le count" lines.
histogram() {
  curl -sf "http://127.0.0.1:${ADMIN_PORT[$CURRENT_SERVER]}/metrics" \
    | awk -F'[{}" ]+' '/^portcullis_request_duration_seconds_bucket/ {
        for (i = 2; i < NF; i++) if ($i == "le=") le = $(i + 1); n[le] += $NF }
      END { for (le in n) print le, n[le] }' | sort -g
}
# server_p99 BEFORE AFTER: the upper bound (ms) of the bucket holding the 99th percentile of
# the requests decided between two histogram snapshots.
server_p99() {
  join <(echo "$1") <(echo "$2") | awk '{ le[NR] = $1; d[NR] = $3 - $2 } END {
    total = d[NR]; if (total <= 0) { print "–"; exit }
    for (i = 1; i <= NR; i++) if (d[i] >= 0.99 * total) { printf "%.3f", le[i] * 1000; exit } }'
}

# scenario NAME METHOD DATA_JSON [half]
scenario() {
  local name="$1" method="$2" data="$3" half="${4:-}" rate
  log "scenario $name: $method on $CURRENT_SERVER (warm-up $WARMUP, run $DURATION)"
  run_ghz "$OUT/$name.warmup.json" "$method" "$data" -z "$WARMUP"
  measure "$OUT/$name.json" "$method" "$data" -z "$DURATION"
  NAMES+=("$name")
  R_SERVER[$name]="$CURRENT_SERVER"
  R_METHOD[$name]="$method"
  R_RPS[$name]="$M_RPS"
  R_P50[$name]="$M_P50"
  R_P99[$name]="$M_P99"
  R_ERRS[$name]="$M_ERRS"
  R_TEARDOWN[$name]="$M_TEARDOWN"
  R_CPU_US[$name]="$M_CPU_US"
  R_SRV_PCT[$name]="$M_SRV_PCT"
  R_GHZ_PCT[$name]="$M_GHZ_PCT"
  R_FOREIGN_PCT[$name]="$M_FOREIGN_PCT"
  R_BOUND[$name]="$M_BOUND"
  if [[ "$half" == half ]]; then
    rate=$((M_RPS / 2))
    log "scenario $name: at half peak, --rps $rate"
    local before
    before="$(histogram)"
    # Fewer ghz workers at a fixed rate: same offered load, less client-side burstiness.
    RUN_CONCURRENCY="$HALF_CONCURRENCY" measure "$OUT/$name.half.json" "$method" "$data" -z "$DURATION" --rps "$rate"
    R_HALF_SERVER_P99[$name]="$(server_p99 "$before" "$(histogram)")"
    R_HALF_RPS[$name]="$M_RPS"
    R_HALF_P99[$name]="$M_P99"
    R_HALF_CPU_US[$name]="$M_CPU_US"
    R_ERRS[$name]=$((R_ERRS[$name] + M_ERRS))
    R_TEARDOWN[$name]=$((R_TEARDOWN[$name] + M_TEARDOWN))
    ((M_FOREIGN_PCT > R_FOREIGN_PCT[$name])) && R_FOREIGN_PCT[$name]="$M_FOREIGN_PCT"
  fi
  return 0
}

# ---------------------------------------------------------------- scenarios
START=$SECONDS
HEALTH=grpc.health.v1.Health/Check
AUTHN=portcullis.v1.Auth/Authenticate
AUTHZ=portcullis.v1.Auth/Authorize
CHECK=envoy.service.auth.v3.Authorization/Check

on_server uncached
scenario floor           "$HEALTH" '{}'
scenario uncached-es256  "$AUTHN"  "$(bearer "$TOKEN_ES256")" half
scenario uncached-rs256  "$AUTHN"  "$(bearer "$TOKEN_RS256")" half
on_server cached
scenario cached-es256    "$AUTHN"  "$(bearer "$TOKEN_ES256")"
scenario apikey-file     "$AUTHN"  "$(api_key "$API_KEY_FILE")"
scenario apikey-postgres "$AUTHN"  "$(api_key "$API_KEY_PG")"
scenario basic-cached    "$AUTHN"  "$(basic)"
scenario check-allow     "$CHECK"  "$(check GET /orders/1 "$TOKEN_ES256")"
scenario check-deny      "$CHECK"  "$(check GET /admin/1 "$TOKEN_ES256")"
scenario authorize-cel   "$AUTHZ"  "$(authorize GET /reports/7 "$TOKEN_ES256")"
on_server telemetry-off
scenario telemetry-off   "$AUTHN"  "$(bearer "$TOKEN_ES256")"
on_server telemetry-on
scenario telemetry-on    "$AUTHN"  "$(bearer "$TOKEN_ES256")"
on_server telemetry-sampled
scenario telemetry-sampled "$AUTHN" "$(bearer "$TOKEN_ES256")"

# ---------------------------------------------------------------- report
FLOOR_RPS="${R_RPS[floor]}"
FLOOR_CPU="${R_CPU_US[floor]}"
sig_for() { # sig_for NAME -> criterion µs for the scenario's algorithm, or empty
  case "$1" in
    *es256*) echo "${SIG_US_ES256:-}" ;;
    *rs256*) echo "${SIG_US_RS256:-}" ;;
  esac
}

{
  echo "## Portcullis load benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes in src/ or Cargo.toml)')"
  echo "- machine: $NPROC CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- ghz $(go version -m "$GHZ" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'): -c $CONCURRENCY, --connections $CONNECTIONS, warm-up $WARMUP then -z $DURATION, reflection, plaintext loopback"
  echo "- $PIN_DESC; server log level warn (telemetry-on: JSON logs at info, metrics, every trace exported over OTLP to a local sink; telemetry-sampled: the same with trace_sample_ratio 0.1; telemetry-off: logs off, per-request metrics off)"
  echo "- cached: \`cache: {max_entries: 100000, max_ttl: 5m}\`; uncached: \`cache: {max_ttl: 0s}\`"
  echo
  echo "| scenario | method | rps | bound | vs floor | p50 ms | p99 ms | server CPU µs/req | ≈ rps/server core | server CPU % | ghz CPU % | foreign CPU % | p99 ms @ half peak (achieved rps) | server-side p99 ms @ half (≤ bucket) | server CPU µs/req @ half | expected µs/req = floor + sig | errors |"
  echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for name in "${NAMES[@]}"; do
    ratio="$(calc "\"%.2f\", ${R_RPS[$name]} / $FLOOR_RPS")"
    half="–"; halfcpu="–"; expected="–"; halfserver="–"
    if [[ -n "${R_HALF_P99[$name]:-}" ]]; then
      half="$(printf '%.2f (%s)' "${R_HALF_P99[$name]}" "${R_HALF_RPS[$name]}")"
      halfcpu="${R_HALF_CPU_US[$name]}"
      halfserver="${R_HALF_SERVER_P99[$name]}"
    fi
    if [[ "$name" == uncached-* ]]; then
      sig="$(sig_for "$name")"
      if [[ -n "$sig" ]]; then
        expected="$(calc "\"%.1f = %s + %s (measured/expected %.2f)\", $FLOOR_CPU + $sig, \"$FLOOR_CPU\", \"$sig\", ${R_CPU_US[$name]} / ($FLOOR_CPU + $sig)")"
      else
        expected="$FLOOR_CPU + \$SIG_US_$(tr a-z A-Z <<<"${name##*-}")"
      fi
    fi
    printf '| %s | %s | %s | %s | %s | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
      "$name (${R_SERVER[$name]})" "${R_METHOD[$name]##*/}" "${R_RPS[$name]}" "${R_BOUND[$name]}" "$ratio" \
      "${R_P50[$name]}" "${R_P99[$name]}" "${R_CPU_US[$name]}" \
      "$(calc "\"%.0f\", 1e6 / ${R_CPU_US[$name]}")" "${R_SRV_PCT[$name]}" \
      "${R_GHZ_PCT[$name]}" "${R_FOREIGN_PCT[$name]}$( ((R_FOREIGN_PCT[$name] > QUIET_MAX)) && echo ' ⚠')" "$half" "$halfserver" "$halfcpu" "$expected" "${R_ERRS[$name]}"
  done
  echo
  echo "rps counts OK responses over ghz's measured time. CPU % columns are percent of one CPU"
  echo "over the wall time of the run: server = utime+stime of the server PID (/proc/PID/stat),"
  echo "ghz = the load generator, foreign = everything else busy on the machine (should be ~0;"
  echo "⚠ above $QUIET_MAX: the row is contaminated, rerun on a quiet machine). bound: the side"
  echo "that used >= 90% of the CPUs it may use (server, or client = ghz), else machine (all"
  echo "CPUs busy), else neither (latency-limited). In a client-bound row rps is ghz's ceiling,"
  echo "not the server's: compare server CPU µs/req (≈ rps/server core = 1e6 / that). vs floor"
  echo "= rps / floor rps (for cached-es256 it is the cached/floor ratio). errors excludes the"
  echo "<= -c requests that"
  echo "ghz -z cuts off at the end of each run (teardown: $(for n in "${NAMES[@]}"; do printf '%s=%s ' "$n" "${R_TEARDOWN[$n]}"; done))."
  echo "Scenario time: $((SECONDS - START))s."
} | tee "$OUT/results.md"
rm -f "$OUT"/*.warmup.json "$OUT"/*.warmup.json.cpu "$OUT"/*.json.cpu
