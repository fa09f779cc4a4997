#!/usr/bin/env bash
# The whole test suite, on a fresh machine: provisions what the tests need (the npm OpenID
# provider, PostgreSQL, nginx, Caddy, Redis, helm, helm-docs, actionlint, Python test tools), then
# runs formatting and lint checks, the Rust tests (unit, integration, real OpenID provider), the Helm chart,
# release workflow, docs, load benchmark script and identity token upstream tests (pytest), and the Go checks of the
# Envoy and Istio examples.
# Under CI=true a test that cannot get a component it needs fails instead of skipping.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }

step "provisioning test dependencies"
scripts/provision/oidc.sh
scripts/provision/python.sh
scripts/provision/helm.sh >/dev/null
scripts/provision/helm-docs.sh >/dev/null
scripts/provision/actionlint.sh >/dev/null
scripts/provision/buildah.sh >/dev/null
# The real proxies in front of the forward-auth listener (tests/it/forward_auth.rs).
PORTCULLIS_NGINX="$(scripts/provision/nginx.sh | tail -n 1)"
PORTCULLIS_CADDY="$(scripts/provision/caddy.sh | tail -n 1)"
export PORTCULLIS_NGINX PORTCULLIS_CADDY
# Redis for the shared rate limits (tests/it/rate_limits.rs runs its own instances).
PORTCULLIS_REDIS_SERVER="$(scripts/provision/redis.sh | tail -n 1)"
export PORTCULLIS_REDIS_SERVER
# Starts (installing Debian packages if needed) a test PostgreSQL on 127.0.0.1:54329 and
# exports PORTCULLIS_TEST_DATABASE_URL for the API key store tests.
PG_ENV="$(scripts/provision/postgres.sh)"
eval "$PG_ENV"
export PATH="$REPO/.tools/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --locked

step "helm chart, container image, release workflow, docs and bench script tests (pytest)"
PORTCULLIS_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/portcullis" "$REPO/.tools/venv/bin/python" -m pytest -q \
  tests/helm tests/image tests/release tests/docs tests/scripts tests/upstream

step "Envoy and Istio examples (go test, tests/examples-validation)"
# GOFLAGS=-mod=mod: go.sum pins every module; downloads stay in the Go module cache.
GOFLAGS=-mod=mod go -C tests/examples-validation test -count=1 ./...
