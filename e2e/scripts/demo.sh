#!/usr/bin/env bash
# `make demo` / `make demo-down`: the whole of FiberStack on this machine, from custom
# resources to status.
#
#   demo.sh up     env-up, build, start the demo targets and the pod runner, `helm install`
#                  the chart (external Redis/PostgreSQL: the local ones), apply the
#                  three-region example, wait until every probe reports, print the table and
#                  a summary from the read API, then stay up until Ctrl-C (which stops the
#                  runner and the targets; the cluster objects and data stay)
#   demo.sh down   uninstall, delete the namespace, stop the runner, the targets and the
#                  local environment
#
# State (pids, logs) lives in /run/fiberstack-demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

NS=fiberstack
RELEASE=fiberstack
DEMO_DB=fiberstack_demo
STATE=/run/fiberstack-demo
HOST_NAME=host.fiberstack.internal
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
BIN="$target_dir/debug"

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

stop_pid() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_processes() {
  stop_pid "$STATE/pod-runner.pid"
  stop_pid "$STATE/demo-targets.pid"
}

probes_ready() {
  # Every FiberProbe Ready and Reporting, with readyProbes = reportingProbes > 0, and every
  # target measured at least once (so the first table shows all of them).
  kubectl -n "$NS" get fiberprobes -o json | jq -e '
    (.items | length) == 3 and all(.items[];
      (.status.conditions // []) as $c
      | ($c | any(.type == "Ready" and .status == "True"))
      and ($c | any(.type == "Reporting" and .status == "True"))
      and (.status.readyProbes // 0) > 0
      and (.status.reportingProbes // 0) == (.status.readyProbes // -1)
      and ((.status.targets // []) | length) > 0
      and all(.status.targets[]; .state != "NoData"))' >/dev/null
}

degraded_seen() {
  kubectl -n "$NS" get fiberprobe lagos-edge -o json | jq -e '
    .status.conditions // [] | any(.type == "Healthy" and .status == "False")' >/dev/null
}

summary() {
  local pod ip region token
  pod=$(jq -r '[.[] | select(.name | startswith("fiberstack-ingest-"))][0] // empty | "\(.name) \(.ip)"' \
    "$STATE/runner/pods.json" 2>/dev/null || true)
  echo
  kubectl get fiberregions,fiberprobes -A
  echo
  kubectl -n "$NS" get fiberprobes -o json | jq -r '
    .items[] | "\(.metadata.name): " + ([.status.conditions[]? | select(.type == "Healthy")
      | "Healthy=\(.status) (\(.reason)): \(.message)"] | join(""))'
  if [[ -n $pod ]]; then
    read -r pod ip <<<"$pod"
    # fiberstack-ingest-<region>-<replicaset hash>-<pod hash>
    region=${pod#fiberstack-ingest-}
    region=${region%-*-*}
    token=$(kubectl -n "$NS" get secret "fiberstack-probe-token-$region" -o jsonpath='{.data.token}' | base64 -d)
    echo
    echo "read API of region $region (http://$ip:8080, pod $pod):"
    curl -fsS -H "Authorization: Bearer $token" "http://$ip:8080/api/v1/nodes" |
      jq -r '(if type == "object" then (.nodes // .items // []) else . end)[]
        | "  node \(.name): region \(.region), country \(.country // "-"), last seen \(.last_seen_at // .lastSeenAt)"' ||
      echo "  (the read API did not answer)"
    curl -fsS -H "Authorization: Bearer $token" "http://$ip:8080/api/status" | jq -c . | sed 's/^/  status: /' || true
  fi
}

up() {
  local start=$SECONDS t
  if ((EUID != 0)); then
    echo "make demo needs root: the pod runner creates a network namespace per pod (try sudo make demo)" >&2
    exit 1
  fi
  mkdir -p "$STATE"
  log "environment"
  bash e2e/scripts/env.sh up
  # shellcheck source=/dev/null
  source e2e/.env/env.sh
  t=$SECONDS
  log "build (debug binaries)"
  cargo build --workspace --bins --locked
  log "build: $((SECONDS - t))s"

  stop_processes
  log "demo targets (healthy HTTP :18080, degraded HTTP :18081, TCP :18082, DNS :18053)"
  nohup "$BIN/demo-targets" >"$STATE/demo-targets.log" 2>&1 &
  echo $! >"$STATE/demo-targets.pid"
  log "pod runner (namespace $NS; logs in $STATE/runner/pods/)"
  nohup "$BIN/pod-runner" run --namespace "$NS" --state-dir "$STATE/runner" \
    >"$STATE/pod-runner.log" 2>&1 &
  echo $! >"$STATE/pod-runner.pid"

  log "database $DEMO_DB and the Secrets the chart and the regions read"
  psql "$DATABASE_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1 ||
    psql "$DATABASE_URL" -qc "CREATE DATABASE $DEMO_DB"
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create secret generic fiberstack-db --dry-run=client -o yaml \
    --from-literal=url="postgres://postgres:postgres@$HOST_NAME:15432/$DEMO_DB?sslmode=require" |
    kubectl apply -f - >/dev/null
  kubectl -n "$NS" create secret generic fiberstack-redis --dry-run=client -o yaml \
    --from-literal=url="redis://$HOST_NAME:16379/" | kubectl apply -f - >/dev/null

  log "helm install $RELEASE charts/fiberstack"
  helm upgrade --install "$RELEASE" charts/fiberstack -n "$NS" \
    --set database.existingSecret=fiberstack-db \
    --set operator.watchNamespace="$NS" \
    --set operator.statusIntervalSeconds=10 \
    --set operator.healthEvaluations=2 \
    --wait --timeout 3m
  log "kubectl apply -f e2e/demo/three-regions.yaml"
  kubectl -n "$NS" apply -f e2e/demo/three-regions.yaml

  log "waiting until every probe is Ready and Reporting (up to 4 minutes)"
  t=$SECONDS
  until probes_ready; do
    if ((SECONDS - t > 240)); then
      summary
      echo "demo: not every probe reports after 4 minutes; see $STATE/pod-runner.log and $STATE/runner/pods/*/" >&2
      exit 1
    fi
    sleep 5
  done
  log "every probe reports ($((SECONDS - t))s); waiting for the degraded target to show (up to 2 minutes)"
  t=$SECONDS
  until degraded_seen || ((SECONDS - t > 120)); do sleep 5; done
  summary
  log "demo up in $((SECONDS - start))s. Samples: psql postgres://postgres:postgres@127.0.0.1:15432/$DEMO_DB (Grafana dashboards: charts/fiberstack/dashboards/)"
  log "Ctrl-C stops the pod runner and the targets; \`make demo-down\` removes everything"
  trap 'echo; log "stopping the pod runner and the demo targets"; stop_processes; exit 0' INT TERM
  while true; do
    sleep 60
    kubectl -n "$NS" get fiberprobes || true
  done
}

down() {
  if [[ -f e2e/.env/env.sh ]]; then
    # shellcheck source=/dev/null
    source e2e/.env/env.sh
    local parts
    # Not piped into grep -q: under pipefail, status's SIGPIPE would read as "down".
    parts=$(bash e2e/scripts/env.sh status 2>/dev/null || true)
    if grep -q '^kube-apiserver *up' <<<"$parts"; then
      helm uninstall "$RELEASE" -n "$NS" 2>/dev/null || true
      # The pod runner must still be up to stop the pods' processes as they go.
      kubectl delete namespace "$NS" --ignore-not-found --timeout=90s || true
    fi
  fi
  stop_processes
  if [[ -x $BIN/pod-runner ]]; then "$BIN/pod-runner" cleanup || true; fi
  bash e2e/scripts/env.sh down
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then return 0; fi
case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
