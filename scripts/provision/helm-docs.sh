#!/usr/bin/env bash
# helm-docs, which generates the values table of helm/portcullis/README.md from
# values.yaml (its `# --` comments) and README.md.gotmpl. The chart tests check the
# committed README for drift. Prints the binary's path as its last line (stdout).
set -euo pipefail
HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"
exec "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh" helm-docs \
  github.com/norwoodj/helm-docs/cmd/helm-docs "$HELM_DOCS_VERSION"
