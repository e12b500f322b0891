#!/usr/bin/env bash
# `make demo` / `make demo-down`: the whole of FiberStack on this machine, from custom
# resources to status.
#
#   demo.sh up     env-up (control plane, the three real nodes, registry), `make images`
#                  (pushed to the local registry), start the demo targets, `helm install`
#                  the chart with those images pinned by digest (external Redis/PostgreSQL:
#                  the local ones, through selector-less Services), apply the three-region
#                  example, wait until every probe reports, print the table and a summary
#                  from the read API, then stay up until Ctrl-C (which stops the targets;
#                  the cluster, its pods and the data stay)
#   demo.sh down   uninstall, delete the namespace, stop the targets and the local
#                  environment
#
# State (pids, logs) lives in /run/fiberstack-demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

NS=fiberstack
RELEASE=fiberstack
DEMO_DB=fiberstack_demo
STATE=/run/fiberstack-demo
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
  stop_pid "$STATE/demo-targets.pid"
  stop_pid "$STATE/alertmanager.pid"
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

# The degraded target's alert, as the demo's Alertmanager holds it.
alert_seen() {
  curl -fsS "http://$FIBERSTACK_HOST_ADDR:19093/api/v2/alerts" 2>/dev/null |
    jq -e 'any(.[]; .labels.probe == "lagos-edge" and .status.state == "active")' >/dev/null
}

degraded_seen() {
  kubectl -n "$NS" get fiberprobe lagos-edge -o json | jq -e '
    .status.conditions // [] | any(.type == "Healthy" and .status == "False")' >/dev/null
}

summary() {
  local pod ip region token
  pod=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=fiber-ingest \
    --field-selector=status.phase=Running -o json 2>/dev/null |
    jq -r '[.items[] | select(.status.podIP)][0] // empty
      | "\(.metadata.name) \(.status.podIP) \(.metadata.labels["app.kubernetes.io/instance"])"' || true)
  echo
  kubectl get fiberregions,fiberprobes -A
  echo
  kubectl -n "$NS" get fiberprobes -o json | jq -r '
    .items[] | "\(.metadata.name): " + ([.status.conditions[]? | select(.type == "Healthy")
      | "Healthy=\(.status) (\(.reason)): \(.message)"] | join(""))'
  echo
  kubectl -n "$NS" get pods -o wide
  if [[ -n $pod ]]; then
    read -r pod ip region <<<"$pod"
    token=$(kubectl -n "$NS" get secret "fiberstack-reader-token-$region" -o jsonpath='{.data.token}' | base64 -d)
    echo
    echo "read API of region $region (http://$ip:8080, pod $pod):"
    curl -fsS -H "Authorization: Bearer $token" "http://$ip:8080/api/v1/nodes" |
      jq -r '(if type == "object" then (.nodes // .items // []) else . end)[]
        | "  node \(.name): region \(.region), country \(.country // "-"), last seen \(.last_seen_at // .lastSeenAt)"' ||
      echo "  (the read API did not answer)"
    curl -fsS -H "Authorization: Bearer $token" "http://$ip:8080/api/status" | jq -c . | sed 's/^/  status: /' || true
  fi
  echo
  echo "alerts in the demo's Alertmanager (http://$FIBERSTACK_HOST_ADDR:19093/api/v2/alerts):"
  curl -fsS "http://$FIBERSTACK_HOST_ADDR:19093/api/v2/alerts" |
    jq -r '.[] | "  \(.labels.alertname) \(.labels.namespace)/\(.labels.probe) target \(.labels.target) (\(.labels.region)): \(.annotations.description), since \(.startsAt)"' ||
    echo "  (Alertmanager did not answer)"
  kubectl -n "$NS" get fibernotifiers
  status_page_url
}

# The status page (statusPage.enabled), served by the operator pods on port 8081; pod IPs
# are reachable from this machine.
status_page_url() {
  local ip
  ip=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=operator \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
  echo
  if [[ -n $ip ]]; then
    echo "status page: http://$ip:8081/ (three regions, the degraded target under Current incidents)"
    echo "  badges: http://$ip:8081/badges/$NS/lagos-edge/uptime.svg?window=24h, .../latency.svg"
    echo "  (in the cluster: Service $RELEASE-status, port 80; statusPage.ingress in the chart)"
  else
    echo "status page: no running operator pod (kubectl -n $NS get pods)"
  fi
}

up() {
  local start=$SECONDS t
  if ((EUID != 0)); then
    echo "make demo needs root: it starts the nodes' kubelets and containerds (try sudo make demo)" >&2
    exit 1
  fi
  mkdir -p "$STATE"
  log "environment"
  bash e2e/scripts/env.sh up
  # shellcheck source=/dev/null
  source e2e/.env/env.sh
  t=$SECONDS
  log "images (release binaries, pushed to the local registry $FIBERSTACK_REGISTRY) and demo-targets"
  bash images/build.sh
  cargo build -p fiberstack-e2e --bin demo-targets --locked
  log "build: $((SECONDS - t))s"

  stop_processes
  log "demo targets (healthy HTTP :18080, degraded HTTP :18081, TCP :18082, DNS :18053)"
  # On the address the pods reach this machine at (UDP answers must come from it).
  nohup "$BIN/demo-targets" --listen "$FIBERSTACK_HOST_ADDR" >"$STATE/demo-targets.log" 2>&1 &
  echo $! >"$STATE/demo-targets.pid"

  log "Alertmanager (http://$FIBERSTACK_HOST_ADDR:19093), where the operator sends alerts"
  mkdir -p "$STATE/alertmanager"
  nohup "$FIBERSTACK_BIN/alertmanager" --config.file=e2e/demo/alertmanager.yml \
    --storage.path="$STATE/alertmanager" --web.listen-address="$FIBERSTACK_HOST_ADDR:19093" \
    --cluster.listen-address= >"$STATE/alertmanager.log" 2>&1 &
  echo $! >"$STATE/alertmanager.pid"

  log "database $DEMO_DB and the Secrets the chart and the regions read"
  psql "$DATABASE_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1 ||
    psql "$DATABASE_URL" -qc "CREATE DATABASE $DEMO_DB"
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # PostgreSQL, Redis and the targets run on this machine, outside the cluster: the pods
  # reach them through selector-less Services, as they would reach managed services.
  sed "s/HOST_ADDR/$FIBERSTACK_HOST_ADDR/" e2e/cluster/outside-services.yaml |
    kubectl -n "$NS" apply -f - >/dev/null
  kubectl -n "$NS" create secret generic fiberstack-db --dry-run=client -o yaml \
    --from-literal=url="postgres://postgres:postgres@postgres.$NS.svc:15432/$DEMO_DB?sslmode=require" |
    kubectl apply -f - >/dev/null
  kubectl -n "$NS" create secret generic fiberstack-redis --dry-run=client -o yaml \
    --from-literal=url="redis://redis.$NS.svc:16379/" | kubectl apply -f - >/dev/null
  # The read API's own credential (probe tokens do not read), one per region, made before the
  # regions so their ingest pods start with it.
  local region
  for region in ghana nigeria kenya; do
    kubectl -n "$NS" get secret "fiberstack-reader-token-$region" >/dev/null 2>&1 ||
      kubectl -n "$NS" create secret generic "fiberstack-reader-token-$region" \
        --from-literal=token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/null
  done

  local digests=()
  while IFS=$'\t' read -r name _ digest _ _; do
    digests+=(--set "image.digests.$name=$digest")
  done < <(tail -n +2 target/images/images.tsv)
  log "helm install $RELEASE charts/fiberstack (images from $FIBERSTACK_REGISTRY, by digest)"
  helm upgrade --install "$RELEASE" charts/fiberstack -n "$NS" \
    --set image.registry="$FIBERSTACK_REGISTRY/fiberstack" "${digests[@]}" \
    --set database.existingSecret=fiberstack-db \
    --set operator.watchNamespace="$NS" \
    --set operator.statusIntervalSeconds=10 \
    --set operator.healthEvaluations=2 \
    --set statusPage.enabled=true \
    --set statusPage.refreshSeconds=10 \
    --wait --timeout 3m
  log "kubectl apply -f e2e/demo/notifier.yaml -f e2e/demo/three-regions.yaml"
  sed "s/HOST_ADDR/$FIBERSTACK_HOST_ADDR/" e2e/demo/notifier.yaml | kubectl -n "$NS" apply -f -
  kubectl -n "$NS" apply -f e2e/demo/three-regions.yaml

  log "waiting until every probe is Ready and Reporting (up to 4 minutes)"
  t=$SECONDS
  until probes_ready; do
    if ((SECONDS - t > 240)); then
      summary
      echo "demo: not every probe reports after 4 minutes; see kubectl -n $NS get pods, kubectl -n $NS logs <pod>" >&2
      exit 1
    fi
    sleep 5
  done
  log "every probe reports ($((SECONDS - t))s); waiting for the degraded target to show (up to 2 minutes)"
  t=$SECONDS
  until degraded_seen || ((SECONDS - t > 120)); do sleep 5; done
  log "waiting for its alert to reach Alertmanager (up to 1 minute)"
  t=$SECONDS
  until alert_seen || ((SECONDS - t > 60)); do sleep 5; done
  summary
  log "demo up in $((SECONDS - start))s. Samples: psql postgres://postgres:postgres@127.0.0.1:15432/$DEMO_DB (Grafana dashboards: charts/fiberstack/dashboards/)"
  log "logs: kubectl -n $NS logs <pod> (source e2e/.env/env.sh first). Ctrl-C stops the demo targets; \`make demo-down\` removes everything"
  trap 'echo; log "stopping the demo targets"; stop_processes; exit 0' INT TERM
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
      # The kubelets must still be up to stop the pods' containers as they go.
      kubectl delete namespace "$NS" --ignore-not-found --timeout=90s || true
    fi
  fi
  stop_processes
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
