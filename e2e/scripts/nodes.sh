#!/usr/bin/env bash
# The environment's three real nodes, one per region of the first users, as local processes
# in this machine's network namespace:
#
#   gh-accra-1    region gh, edge    10.240.0.11   pods 10.244.1.0/24   bridge fsbr-gh
#   ng-lagos-1    region ng, edge    10.240.0.12   pods 10.244.2.0/24   bridge fsbr-ng
#   ke-nairobi-1  region ke          10.240.0.13   pods 10.244.3.0/24   bridge fsbr-ke
#
# Each node is a kubelet and a containerd of its own (runc, overlayfs, CNI bridge +
# host-local). Shared by the three, because they share one network namespace: kube-proxy
# (nftables) for Services, CoreDNS for cluster.local, and a local OCI registry from which the
# nodes pull every image, the pod sandbox's (pause) included: nothing can be pulled from the
# internet here.
#
#   nodes.sh up       start what is not running (after env.sh has started the control plane)
#   nodes.sh down     stop it all and remove what it left on the machine (before the control
#                     plane stops)
#   nodes.sh status   one line per part
#
# env.sh up/down/status call it. Settings and helpers (spawn, stop, ports, PKI) come from
# env.sh. The environment's one concession to this machine: root here lacks CAP_SYS_RESOURCE,
# so containers cannot get a negative oom_score_adj (the kubelet asks -998 for sandboxes, -997
# for Guaranteed pods); containerd's restrict_oom_score_adj raises those to containerd's own
# (0). Everything else runs as in a kubeadm cluster.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

NODES_DIR="$ENV_DIR/nodes"
# Sockets and runtime state: short paths (a unix socket path has at most 107 bytes), one
# folder per checkout.
RUN_DIR="/run/fiberstack/$(echo "$ENV_DIR" | md5sum | cut -c1-8)"

REGISTRY_PORT=15000
REGISTRY="$HOST:$REGISTRY_PORT"
PAUSE_IMAGE="$REGISTRY/fiberstack/pause:3.10"
# netcheck's tag is derived from its source (build_images): a node that has an image keeps
# using it for the same tag (imagePullPolicy IfNotPresent), so a changed image needs a new tag.
NETCHECK_IMAGE=""

DNS_ADDR=10.240.0.10       # CoreDNS on the host (lo)
DNS_SERVICE_IP=10.96.0.10  # the kube-dns Service, the kubelets' clusterDNS
DNS_HEALTH_PORT=16281
DNS_READY_PORT=16282
KUBE_PROXY_HEALTHZ_PORT=16256
KUBE_PROXY_METRICS_PORT=16249

# name short-name node-address pod-cidr kubelet-port kubelet-healthz-port labels
NODES=(
  "gh-accra-1 gh 10.240.0.11 10.244.1.0/24 16311 16321 topology.kubernetes.io/region=gh,fiberstack.io/edge=true"
  "ng-lagos-1 ng 10.240.0.12 10.244.2.0/24 16312 16322 topology.kubernetes.io/region=ng,fiberstack.io/edge=true"
  "ke-nairobi-1 ke 10.240.0.13 10.244.3.0/24 16313 16323 topology.kubernetes.io/region=ke"
)
# Labels every real node carries (tests select them; kwok's nodes never have it).
COMMON_LABELS="fiberstack.io/real=true"

# Host settings the nodes change (the kubelet sets the kernel tunables it expects; pods are
# routed between bridges; kube-proxy must see bridged traffic). Saved before the first
# change, restored by down.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# Outside the checkout, shared by nature: containerd's shim sockets (/run/containerd/s),
# pod network namespaces (/run/netns), the CNI result cache (/var/lib/cni), the kubelets'
# log symlinks (/var/log/containers; pod logs themselves are per node), and the device
# plugin socket every kubelet puts at the same fixed path whatever its --root-dir (no device
# plugins run here: harmless).
HOST_DIRS=(/run/containerd/s /run/containerd /run/netns /var/lib/cni/results /var/lib/cni
  /var/log/containers /var/log/pods /var/lib/kubelet/device-plugins /var/lib/kubelet)

nlog() { echo "nodes: $*" >&2; }
ndie() { echo "nodes: error: $*" >&2; exit 1; }
kc() { "$BIN/kubectl" --kubeconfig "$ENV_DIR/kubeconfig" "$@"; }

# ---------------------------------------------------------------------------------------
# host networking

host_network() {
  local node short addr
  for line in "${NODES[@]}"; do
    read -r node short addr _ <<<"$line"
    ip addr replace "$addr/32" dev lo
  done
  ip addr replace "$DNS_ADDR/32" dev lo
  [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
    ndie "/proc/sys/net/bridge is missing and br_netfilter cannot be loaded: kube-proxy would not see traffic between pods of one bridge"
  if [[ ! -f "$NODES_DIR/sysctl.saved" ]]; then
    mkdir -p "$NODES_DIR"
    local k d
    for k in "${SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$NODES_DIR/sysctl.saved.tmp"
    # Folders the runtimes create outside the checkout, when absent before: removed by down.
    for d in "${HOST_DIRS[@]}"; do [[ -e "$d" ]] || echo "$d"; done >"$NODES_DIR/dirs.created"
    mv "$NODES_DIR/sysctl.saved.tmp" "$NODES_DIR/sysctl.saved"
  fi
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Pod traffic leaving the pod networks (to anything but pods and this machine) goes out
  # masqueraded, as the bridge plugin's ipMasq would do. One table of ours rather than
  # ipMasq: the plugin adds a chain per container, which stays behind when down stops the
  # runtimes instead of deleting every pod through the CRI.
  nft -f - <<EOF
table ip fiberstack-nodes
delete table ip fiberstack-nodes
table ip fiberstack-nodes {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $CLUSTER_CIDR ip daddr != $CLUSTER_CIDR masquerade
  }
}
EOF
  # Forwarded pod traffic must not be dropped by a firewall of this machine.
  if iptables -S FORWARD 2>/dev/null | grep -q '^-P FORWARD DROP'; then
    nlog "warning: iptables' FORWARD policy is DROP: pods on different nodes may not reach each other (iptables -P FORWARD ACCEPT)"
  fi
}

host_network_down() {
  local node short addr
  for line in "${NODES[@]}"; do
    read -r node short addr _ <<<"$line"
    ip link del "fsbr-$short" 2>/dev/null || true
    ip addr del "$addr/32" dev lo 2>/dev/null || true
  done
  ip addr del "$DNS_ADDR/32" dev lo 2>/dev/null || true
  nft delete table ip fiberstack-nodes 2>/dev/null || true
  # kube-proxy leaves its rules when it stops.
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  # The CNI results containerd cached for pods it did not delete through CNI.
  rm -f /var/lib/cni/results/fiberstack-*
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  if [[ -f "$NODES_DIR/sysctl.saved" ]]; then
    local kv d
    while read -r kv; do sysctl -qw "$kv" || true; done <"$NODES_DIR/sysctl.saved"
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$NODES_DIR/dirs.created"
    rm -f "$NODES_DIR/sysctl.saved" "$NODES_DIR/dirs.created"
  fi
}

# ---------------------------------------------------------------------------------------
# registry and images

check_registry() { curl -sf --max-time 5 "http://$REGISTRY/v2/" >/dev/null; }

start_registry() {
  running registry && return
  port_free registry "$REGISTRY_PORT"
  mkdir -p "$ENV_DIR/registry"
  cat >"$NODES_DIR/registry.yml" <<EOF
version: 0.1
log: { level: warn, formatter: text }
storage:
  filesystem: { rootdirectory: $ENV_DIR/registry }
  delete: { enabled: true }
http:
  addr: $REGISTRY
EOF
  local t=$SECONDS
  # OTEL_TRACES_EXPORTER: the registry would otherwise export traces to localhost:4318.
  OTEL_TRACES_EXPORTER=none spawn registry "$BIN/registry" serve "$NODES_DIR/registry.yml"
  wait_for registry 30 check_registry
  nlog "started the registry ($REGISTRY) in $((SECONDS - t))s"
}

# build_image NAME TAG SOURCE.c USER: a FROM-scratch image holding SOURCE built statically
# as /NAME, run as USER, pushed to the registry as fiberstack/NAME:TAG (TAG "source": the
# first 12 hex digits of the source's hash). Built only when the registry lacks it or the
# source changed; reproducible (same source and compiler: same digest). Sets IMAGE.
build_image() {
  local name=$1 tag=$2 src=$3 user=$4 stamp
  stamp=$( (cat "$src"; gcc --version | head -n 1; buildah --version; echo "$user") | sha256sum | cut -c1-64)
  [[ "$tag" == source ]] && tag=${stamp:0:12}
  local ref="$REGISTRY/fiberstack/$name:$tag"
  local stamp_file="$NODES_DIR/images/$name-$tag.stamp"
  IMAGE=$ref
  if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] &&
    curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$REGISTRY/v2/fiberstack/$name/manifests/$tag"; then
    return
  fi
  local t=$SECONDS ctx
  ctx=$(mktemp -d)
  local libs=()
  [[ "$name" == netcheck ]] && libs=(-lresolv)
  gcc -static -Os -s -Wall -o "$ctx/$name" "$src" "${libs[@]}" || ndie "cannot compile $src"
  cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY $name /$name
USER $user
ENTRYPOINT ["/$name"]
EOF
  # Own storage (vfs: no overlay mounts needed), thrown away after the push.
  local bh=(buildah --root "$ctx/storage" --runroot "$ctx/run" --storage-driver vfs)
  "${bh[@]}" build --quiet --timestamp 0 --format oci -f "$ctx/Containerfile" -t "$ref" "$ctx" >"$ctx/build.log" 2>&1 ||
    { cat "$ctx/build.log" >&2; ndie "buildah could not build $ref"; }
  "${bh[@]}" push --quiet --tls-verify=false "$ref" "docker://$ref" >"$ctx/push.log" 2>&1 ||
    { cat "$ctx/push.log" >&2; ndie "buildah could not push $ref to the registry"; }
  rm -rf "$ctx"
  mkdir -p "$NODES_DIR/images"
  echo "$stamp" >"$stamp_file"
  nlog "built and pushed $ref in $((SECONDS - t))s"
}

build_images() {
  # pause runs as 65535, as upstream's does.
  build_image pause 3.10 "$e2e/cluster/pause/pause.c" 65535
  # The environment tests' container (no shell, like the product's images).
  build_image netcheck source "$e2e/cluster/netcheck/netcheck.c" 65532
  NETCHECK_IMAGE=$IMAGE
}

# ---------------------------------------------------------------------------------------
# credentials

# kubeconfig_for FILE NAME: a kubeconfig authenticating with pki/NAME.{crt,key}.
kubeconfig_for() {
  local file=$1 name=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fiberstack-local
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: fiberstack-local
  context: { cluster: fiberstack-local, user: $name }
current-context: fiberstack-local
EOF
}

credentials() {
  local node
  for line in "${NODES[@]}"; do
    read -r node _ <<<"$line"
    # The Node authorizer lets system:node:<name> (group system:nodes) see and change what
    # belongs to its node.
    [[ -f "$PKI/kubelet-$node.crt" ]] ||
      issue_cert "kubelet-$node" "/O=system:nodes/CN=system:node:$node" "extendedKeyUsage=clientAuth"
    mkdir -p "$NODES_DIR/$node"
    kubeconfig_for "$NODES_DIR/$node/kubeconfig" "kubelet-$node"
  done
  # system:kube-proxy is bound to the built-in ClusterRole system:node-proxier.
  [[ -f "$PKI/kube-proxy.crt" ]] || issue_cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  kubeconfig_for "$NODES_DIR/kube-proxy.kubeconfig" kube-proxy
}

# ---------------------------------------------------------------------------------------
# cluster objects the nodes rely on

cluster_objects() {
  # Nodes of these names from before the real nodes (kwok's fakes): a kubelet does not take
  # over an existing Node's labels and annotations, so they go.
  local node
  for line in "${NODES[@]}"; do
    read -r node _ <<<"$line"
    if [[ -n "$(kc get node "$node" -o jsonpath='{.metadata.annotations.kwok\.x-k8s\.io/node}' 2>/dev/null)" ]]; then
      kc delete node "$node" --wait=true >/dev/null
      nlog "deleted kwok's fake node $node (the real one takes its name)"
    fi
  done
  # kube-dns as in any cluster, its endpoint the CoreDNS on the host.
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: { k8s-app: kube-dns, kubernetes.io/name: CoreDNS }
spec:
  clusterIP: $DNS_SERVICE_IP
  ports:
  - { name: dns, port: 53, protocol: UDP, targetPort: 53 }
  - { name: dns-tcp, port: 53, protocol: TCP, targetPort: 53 }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: fiberstack-env
addressType: IPv4
endpoints:
- addresses: ["$DNS_ADDR"]
  conditions: { ready: true }
ports:
- { name: dns, port: 53, protocol: UDP }
- { name: dns-tcp, port: 53, protocol: TCP }
EOF
}

# ---------------------------------------------------------------------------------------
# CoreDNS and kube-proxy (one each: the three nodes share the host's network namespace, and
# three kube-proxies there would rewrite the same nftables table against each other)

check_coredns() { curl -sf --max-time 5 "http://$HOST:$DNS_READY_PORT/ready" >/dev/null; }

start_coredns() {
  running coredns && return
  port_free coredns "$DNS_READY_PORT"
  port_free coredns "$DNS_HEALTH_PORT"
  # cluster.local from the API; every other name is answered NXDOMAIN at once (there is no
  # internet to forward to, and a resolver that times out makes every lookup slow).
  cat >"$NODES_DIR/Corefile" <<EOF
cluster.local:53 {
  bind $DNS_ADDR
  errors
  health $HOST:$DNS_HEALTH_PORT
  ready $HOST:$DNS_READY_PORT
  kubernetes cluster.local {
    kubeconfig $ENV_DIR/kubeconfig fiberstack-local
    pods insecure
  }
  cache 5
}
.:53 {
  bind $DNS_ADDR
  errors
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
  local t=$SECONDS
  spawn coredns "$BIN/coredns" -conf "$NODES_DIR/Corefile"
  wait_for coredns 60 check_coredns
  nlog "started CoreDNS ($DNS_ADDR:53, Service $DNS_SERVICE_IP) in $((SECONDS - t))s"
}

check_kube_proxy() { curl -sf --max-time 5 "http://$HOST:$KUBE_PROXY_HEALTHZ_PORT/healthz" >/dev/null; }

start_kube_proxy() {
  running kube-proxy && return
  port_free kube-proxy "$KUBE_PROXY_HEALTHZ_PORT"
  port_free kube-proxy "$KUBE_PROXY_METRICS_PORT"
  # conntrack settings 0: leave the machine's conntrack sysctls as they are.
  cat >"$NODES_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODES_DIR/kube-proxy.kubeconfig
mode: nftables
clusterCIDR: $CLUSTER_CIDR
detectLocalMode: ClusterCIDR
hostnameOverride: gh-accra-1
bindAddress: $HOST
healthzBindAddress: $HOST:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: $HOST:$KUBE_PROXY_METRICS_PORT
nodePortAddresses: ["10.240.0.0/24"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  local t=$SECONDS
  spawn kube-proxy "$BIN/kube-proxy" --config="$NODES_DIR/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 check_kube_proxy
  nlog "started kube-proxy (nftables) in $((SECONDS - t))s"
}

# ---------------------------------------------------------------------------------------
# one node: containerd + kubelet

node_dirs() {
  local node=$1 short=$2
  ND="$NODES_DIR/$node"
  NR="$RUN_DIR/$short"
}

check_containerd() { ctr -a "$NR/containerd.sock" version >/dev/null; }

start_containerd() {
  local node=$1 short=$2 cidr=$3
  running "containerd-$node" && return
  mkdir -p "$ND/containerd" "$ND/cni/net.d" "$ND/certs.d/$REGISTRY" "$NR"
  # Plain HTTP to the local registry, by tag and by digest.
  cat >"$ND/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  # The node's pod network: a bridge of its own on the host, host-local addresses from the
  # node's podCIDR (kept in the node's folder). CRI adds the pod's `lo` itself (loopback
  # plugin). portmap for hostPort.
  cat >"$ND/cni/net.d/10-fiberstack.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fiberstack-$short",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "fsbr-$short",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$cidr" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$ND/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"$ND/containerd/config.toml" <<EOF
version = 2
root = "$ND/containerd/root"
state = "$NR/containerd"
plugin_dir = ""
# Storage drivers this machine has no use for (they only log that they cannot start).
disabled_plugins = ["io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$NR/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
  level = "warn"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "$HOST"
  stream_server_port = "0"
  # The one concession to this machine (see the top of this file).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ND/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$ND/certs.d"
EOF
  spawn "containerd-$node" containerd --config "$ND/containerd/config.toml"
  wait_for "containerd-$node" 30 check_containerd
}

# cgroupRoot must exist before the kubelet starts, in every hierarchy (cgroup v1 here, plus
# the unified one). A new cpuset cgroup starts with no CPUs or memory nodes: copy the root's.
make_cgroup_root() {
  local short=$1 h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h" ]] || continue
    mkdir -p "$h/fiberstack-$short"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$h/fiberstack-$short/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/fiberstack-$short/cpuset.mems"
    fi
  done
}

check_kubelet() { curl -sf --max-time 5 "http://$HOST:$KUBELET_HEALTHZ/healthz" | grep -q ok; }

start_kubelet() {
  local node=$1 short=$2 addr=$3 cidr=$4 port=$5 healthz=$6 labels=$7
  running "kubelet-$node" && return
  STARTED+=("$node")
  port_free "kubelet-$node" "$port"
  port_free "kubelet-$node" "$healthz"
  mkdir -p "$ND/kubelet" "$ND/pod-logs"
  echo "nameserver $DNS_ADDR" >"$NODES_DIR/resolv.conf"
  # cgroupRoot: each kubelet its own kubepods hierarchy (three in one machine). podLogsDir:
  # a kubelet deletes the log folders of pods it does not know, so not the shared
  # /var/log/pods. Eviction thresholds low: the disk is shared and large.
  cat >"$ND/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $addr
port: $port
readOnlyPort: 0
healthzBindAddress: $HOST
healthzPort: $healthz
containerRuntimeEndpoint: unix://$NR/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /fiberstack-$short
failCgroupV1: false
failSwapOn: false
podLogsDir: $ND/pod-logs
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: $NODES_DIR/resolv.conf
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization:
  mode: Webhook
serializeImagePulls: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
nodeStatusReportFrequency: 10s
rotateCertificates: false
serverTLSBootstrap: false
# Its iptables chains (KUBE-FIREWALL against route_localnet, which kube-proxy's nftables
# mode does not set; canaries) would outlive it in tables this machine did not have.
makeIPTablesUtilChains: false
EOF
  KUBELET_HEALTHZ=$healthz
  make_cgroup_root "$short"
  spawn "kubelet-$node" "$BIN/kubelet" \
    --config="$ND/kubelet.yaml" --kubeconfig="$ND/kubeconfig" --root-dir="$ND/kubelet" \
    --cert-dir="$ND/kubelet-pki" \
    --hostname-override="$node" --node-ip="$addr" \
    --node-labels="$labels,$COMMON_LABELS" --v=1
  wait_for "kubelet-$node" 60 check_kubelet
}

# The Node object: the podCIDR the node's CNI uses (the controller-manager allocates none),
# the labels (also on a Node registered before), then Ready.
register_node() {
  local node=$1 cidr=$2 labels=$3
  local deadline=$((SECONDS + 60))
  until kc get node "$node" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || ndie "node $node did not register within 60s (log: $LOGS/kubelet-$node.log)"
    sleep 0.5
  done
  if [[ -z "$(kc get node "$node" -o jsonpath='{.spec.podCIDR}')" ]]; then
    kc patch node "$node" --type merge -p "{\"spec\":{\"podCIDR\":\"$cidr\",\"podCIDRs\":[\"$cidr\"]}}" >/dev/null
  fi
  # shellcheck disable=SC2086
  kc label node "$node" --overwrite ${labels//,/ } ${COMMON_LABELS//,/ } >/dev/null
}

# node_ready NODE [SINCE]: Ready, and (with SINCE, an RFC 3339 UTC time) reported so by a
# heartbeat at or after SINCE: a Node keeps the status of its last run through a down.
node_ready() {
  local node=$1 since=${2:-} status heartbeat
  read -r status heartbeat < <(kc get node "$node" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null) || true
  [[ "$status" == True && ! "$heartbeat" < "$since" ]]
}

# Everything the kubelet and containerd of a node leave: containers (killed: the nodes come
# back with their pods on the next up, as after a reboot), pod network namespaces, mounts.
node_down() {
  local node=$1 short=$2
  node_dirs "$node" "$short"
  stop "kubelet-$node"
  if running "containerd-$node"; then
    local ctrn=(ctr -a "$NR/containerd.sock" -n k8s.io) id netns
    for id in $("${ctrn[@]}" containers list -q 2>/dev/null); do
      netns=$("${ctrn[@]}" containers info "$id" 2>/dev/null |
        jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty' 2>/dev/null || true)
      "${ctrn[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      rm -f /var/lib/cni/results/*-"$id"-*
      if [[ "$netns" == /var/run/netns/* || "$netns" == /run/netns/* ]]; then
        echo "$netns" >>"$ND/netns.leftover"
      fi
    done
    local deadline=$((SECONDS + 15))
    for id in $("${ctrn[@]}" containers list -q 2>/dev/null); do
      until "${ctrn[@]}" tasks delete "$id" >/dev/null 2>&1 || ! "${ctrn[@]}" tasks list -q 2>/dev/null | grep -qx "$id"; do
        ((SECONDS < deadline)) || break
        sleep 0.3
      done
      "${ctrn[@]}" containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop "containerd-$node"
  # Shims outlive containerd by design; with their containers gone they exit, but a stuck
  # one holding the node's state would keep the next containerd from cleaning up.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $NR/containerd.sock" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -f "$ND/netns.leftover" ]]; then
    local ns
    for ns in $(sort -u "$ND/netns.leftover"); do
      [[ -e "$ns" ]] || continue
      ip netns del "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null || true; rm -f "$ns"; }
    done
    rm -f "$ND/netns.leftover"
  fi
  # Secrets, ConfigMaps, projected tokens (tmpfs) and the containers' rootfs overlays.
  local m
  for m in $(awk -v a="$ND/" -v b="$NR/" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # Pod addresses, pod logs and kubelet state go with the pods; images (containerd's root)
  # stay, so the next up pulls nothing.
  rm -rf "$ND/cni/ipam" "$ND/kubelet" "$ND/pod-logs"
  rm -rf "$NR"
  # The kubelet's cgroups (empty now that no process is in them).
  local c
  for c in /sys/fs/cgroup/*/fiberstack-"$short" /sys/fs/cgroup/fiberstack-"$short"; do
    [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# ---------------------------------------------------------------------------------------
# commands

write_nodes_env() {
  cat >"$ENV_DIR/nodes.env" <<EOF
# The real nodes (e2e/scripts/nodes.sh): the registry they pull from (plain HTTP; push to
# \$FIBERSTACK_REGISTRY/fiberstack/<name>:<tag>), the images built here.
export FIBERSTACK_REGISTRY="$REGISTRY"
export FIBERSTACK_PAUSE_IMAGE="$PAUSE_IMAGE"
export FIBERSTACK_NETCHECK_IMAGE="$NETCHECK_IMAGE"
export FIBERSTACK_DNS_SERVICE_IP="$DNS_SERVICE_IP"
EOF
}

nodes_up() {
  local start=$SECONDS
  [[ -x "$BIN/kubelet" && -x "$BIN/kube-proxy" && -x "$BIN/coredns" && -x "$BIN/registry" ]] ||
    ndie "kubelet, kube-proxy, coredns or registry missing in $BIN: run env.sh up (it builds them)"
  running kube-apiserver || ndie "the kube-apiserver is not running: run env.sh up"
  mkdir -p "$NODES_DIR" "$RUN_DIR"
  host_network
  start_registry
  build_images
  credentials
  cluster_objects
  start_coredns
  local line node short addr cidr port healthz labels t=$SECONDS since
  STARTED=()
  since=$(date -u -d '-1 second' +%Y-%m-%dT%H:%M:%SZ)
  for line in "${NODES[@]}"; do
    read -r node short addr cidr port healthz labels <<<"$line"
    node_dirs "$node" "$short"
    start_containerd "$node" "$short" "$cidr"
    start_kubelet "$node" "$short" "$addr" "$cidr" "$port" "$healthz" "$labels"
  done
  for line in "${NODES[@]}"; do
    read -r node short addr cidr port healthz labels <<<"$line"
    register_node "$node" "$cidr" "$labels"
  done
  # After the nodes registered: kube-proxy reads its node (gh-accra-1) at start.
  start_kube_proxy
  local deadline=$((SECONDS + 120))
  for line in "${NODES[@]}"; do
    read -r node _ <<<"$line"
    local from=""
    [[ " ${STARTED[*]} " == *" $node "* ]] && from=$since
    until node_ready "$node" "$from"; do
      ((SECONDS < deadline)) || { tail -n 30 "$LOGS/kubelet-$node.log" >&2; ndie "node $node not Ready within 120s (log: $LOGS/kubelet-$node.log)"; }
      sleep 0.5
    done
  done
  ((${#STARTED[@]} == 0)) || nlog "started ${STARTED[*]} (containerd + kubelet each): Ready in $((SECONDS - t))s"
  write_nodes_env
  write_env_file
  nlog "nodes up in $((SECONDS - start))s"
}

nodes_down() {
  local line node short
  for line in "${NODES[@]}"; do
    read -r node short _ <<<"$line"
    node_down "$node" "$short"
  done
  for name in kube-proxy coredns registry; do
    stop "$name"
  done
  # Log symlinks of our pods the kubelets left in /var/log/containers.
  local l
  for l in /var/log/containers/*.log; do
    if [[ -L "$l" && "$(readlink "$l")" == "$NODES_DIR/"* ]]; then rm -f "$l"; fi
  done
  host_network_down
  rm -rf "$RUN_DIR"
  rmdir /run/fiberstack 2>/dev/null || true
  return 0
}

nodes_status() {
  local line name addr check
  for line in \
    "registry http://$REGISTRY check_registry" \
    "coredns $DNS_ADDR:53 check_coredns" \
    "kube-proxy nftables check_kube_proxy"; do
    read -r name addr check <<<"$line"
    if running "$name" && $check >/dev/null 2>&1; then
      printf '%-24s up    %-32s pid %s\n' "$name" "$addr" "$(pid_of "$name")"
    else
      printf '%-24s down  %s\n' "$name" "$addr"
    fi
  done
  local node short ip
  for line in "${NODES[@]}"; do
    read -r node short ip _ <<<"$line"
    node_dirs "$node" "$short"
    local state=down what=""
    if running "containerd-$node" && running "kubelet-$node"; then
      if node_ready "$node"; then state=up; what="Ready"; else what="not Ready"; fi
    elif running "kubelet-$node" || running "containerd-$node"; then
      what="kubelet or containerd not running"
    fi
    printf '%-24s %-5s %-32s %s\n' "node/$node" "$state" "$ip" "$what"
  done
}

case "${1:-}" in
  up) nodes_up ;;
  down) nodes_down ;;
  status) nodes_status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
