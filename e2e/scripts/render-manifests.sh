#!/usr/bin/env bash
# Renders manifests/fiberstack.yaml, the plain-YAML install bundle, from charts/fiberstack:
# `make manifests` writes it; a test (e2e/tests/chart.rs) fails when it is stale.
#   render-manifests.sh            print the bundle
#   render-manifests.sh --write    write manifests/fiberstack.yaml
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
helm="${HELM:-$root/e2e/.env/bin/helm}"
[[ -x "$helm" ]] || helm=helm

render() {
  cat <<'HEADER'
# FiberStack install bundle, rendered from charts/fiberstack by `make manifests` — do not edit.
#
#   kubectl create namespace fiberstack
#   kubectl -n fiberstack create secret generic fiberstack-db --from-literal=url='postgres://…'
#   kubectl apply --server-side -f manifests/fiberstack.yaml
#
# It expects an external database: the Secret `fiberstack-db` (key `url`, a role allowed to
# create tables) in namespace `fiberstack`. For bundled TimescaleDB/Redis, use the Helm chart.
---
apiVersion: v1
kind: Namespace
metadata:
  name: fiberstack
HEADER
  "$helm" template fiberstack "$root/charts/fiberstack" --namespace fiberstack --include-crds \
    --set database.existingSecret=fiberstack-db
}

if [[ "${1:-}" == --write ]]; then
  render >"$root/manifests/fiberstack.yaml"
  echo "wrote manifests/fiberstack.yaml"
else
  render
fi
