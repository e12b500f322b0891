#!/usr/bin/env bash
# Builds the Kubernetes control plane, etcd, kwok and helm from the Go module proxy at the
# versions pinned in versions.sh, into $FIBERSTACK_CACHE/<component>-<version>/. Only what is
# missing is built; each build prints how long it took.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$(cd "$here/../tools" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local

# build NAME VERSION PKG WORKDIR LDFLAGS: go build PKG inside WORKDIR into the cache.
build() {
  local name=$1 version=$2 pkg=$3 workdir=$4 ldflags=$5
  local dest="$FIBERSTACK_CACHE/$name-$version"
  if [[ -x "$dest/$name" ]]; then
    echo "build-tools: $name $version cached at $dest"
    return
  fi
  mkdir -p "$dest"
  echo "build-tools: building $name $version ($pkg) ..."
  local start=$SECONDS
  (cd "$workdir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$dest/$name.tmp" "$pkg")
  mv "$dest/$name.tmp" "$dest/$name"
  echo "build-tools: built $name $version in $((SECONDS - start))s"
}

k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)
k8s_ld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"

only="${1:-all}"
want() { [[ "$only" == all || " $only " == *" $1 "* ]]; }

want etcd && build etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$tools/etcd" ""
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  want "$c" && build "$c" "$K8S_VERSION" "k8s.io/kubernetes/cmd/$c" "$tools/kubernetes" "$k8s_ld"
done
# kwok and helm have no local replaces: build them from a throwaway module via go install.
gi() {
  local name=$1 version=$2 pkg=$3 ldflags=$4
  local dest="$FIBERSTACK_CACHE/$name-$version"
  if [[ -x "$dest/$name" ]]; then
    echo "build-tools: $name $version cached at $dest"
    return
  fi
  mkdir -p "$dest"
  echo "build-tools: building $name $version ($pkg) ..."
  local start=$SECONDS
  GOBIN="$dest" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version"
  echo "build-tools: built $name $version in $((SECONDS - start))s"
}
want kwok && gi kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
# kwok v0.8 needs its Stage objects (how a fake node heartbeats, how a pod becomes Ready) as
# configuration: take them from the same module release, next to the binary.
kwok_stages() {
  local dest="$FIBERSTACK_CACHE/kwok-$KWOK_VERSION/stages"
  [[ -f "$dest/pod-ready.yaml" ]] && return
  local dir
  dir=$(cd "$(mktemp -d)" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$dir" ]] || { echo "build-tools: kwok $KWOK_VERSION module source not found" >&2; exit 1; }
  mkdir -p "$dest.tmp"
  cp "$dir/kustomize/stage/node/fast/node-initialize.yaml" \
    "$dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$dir/kustomize/stage/pod/fast/pod-ready.yaml" "$dir/kustomize/stage/pod/fast/pod-complete.yaml" \
    "$dir/kustomize/stage/pod/fast/pod-delete.yaml" "$dest.tmp/"
  chmod -R u+w "$dest.tmp"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
}
want kwok && kwok_stages
# The real nodes' DNS and the registry their containerd pulls our images from.
want coredns && gi coredns "$COREDNS_VERSION" github.com/coredns/coredns ""
want registry && gi registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry ""
# Alertmanager (the alerting tests' real receiver) embeds its web UI from ui/app/dist, which
# is built by npm and not part of the module: build from a copy of the module source with an
# empty UI (the API, which is all the tests use, is unaffected).
alertmanager() {
  local dest="$FIBERSTACK_CACHE/alertmanager-$ALERTMANAGER_VERSION"
  if [[ -x "$dest/alertmanager" ]]; then
    echo "build-tools: alertmanager $ALERTMANAGER_VERSION cached at $dest"
    return
  fi
  echo "build-tools: building alertmanager $ALERTMANAGER_VERSION ..."
  local start=$SECONDS dir src
  dir=$(cd "$(mktemp -d)" && GOFLAGS= go mod download -json "github.com/prometheus/alertmanager@$ALERTMANAGER_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$dir" ]] || { echo "build-tools: alertmanager $ALERTMANAGER_VERSION module source not found" >&2; exit 1; }
  src=$(mktemp -d)
  cp -r "$dir/." "$src/"
  chmod -R u+w "$src"
  mkdir -p "$src/ui/app/dist"
  echo '<!doctype html><title>Alertmanager</title><p>The web UI is not built in.' >"$src/ui/app/dist/index.html"
  mkdir -p "$dest"
  (cd "$src" && go build -trimpath \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${ALERTMANAGER_VERSION#v}" \
    -o "$dest/alertmanager.tmp" ./cmd/alertmanager)
  mv "$dest/alertmanager.tmp" "$dest/alertmanager"
  rm -rf "$src"
  echo "build-tools: built alertmanager $ALERTMANAGER_VERSION in $((SECONDS - start))s"
}
want alertmanager && alertmanager
want helm && gi helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
echo "build-tools: done"
