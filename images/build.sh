#!/usr/bin/env bash
# `make images`: the four FiberStack images, built from the workspace's release binaries with
# Debian's buildah (no daemon; vfs storage, so it works where overlay mounts are refused).
#
#   images/build.sh [--push REGISTRY | --no-push] [--only NAME] [--out DIR] [--no-cargo]
#
# For each of fiberstack-operator, fiber-probe, fiber-ingest, fiber-etl:
#   - the rootfs of images/rootfs.sh (binary, the shared libraries it links, CA certificates,
#     passwd/group with uid 65532) on `scratch`: no shell, no package manager;
#   - OCI config: entrypoint /usr/local/bin/<name>, user 65532:65532, PATH, and the
#     org.opencontainers.image.* labels (version = the chart's appVersion, source, revision);
#   - reproducible: every timestamp is the epoch, so the same sources give the same digests;
#   - written as an OCI archive target/images/<name>.tar (tag <name>:<version> inside), and
#     with --push (or FIBERSTACK_REGISTRY set, as e2e/.env/env.sh does) pushed to
#     REGISTRY/fiberstack/<name>:<version> over plain HTTP (a local registry).
# --only builds one image, --out writes elsewhere than target/images, --no-cargo takes the
# release binaries as they are (the reproducibility test assembles an image a second time
# into a directory of its own).
# target/images/images.tsv lists name, version, digest, size and the pushed reference: the
# chart takes the digests (image.digests.<name>), the tests read the file.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The local environment's registry, when it is up (make env-up writes its address there).
if [[ -z "${FIBERSTACK_REGISTRY:-}" && -f e2e/.env/env.sh ]]; then
  # shellcheck source=/dev/null
  source e2e/.env/env.sh
fi
registry="${FIBERSTACK_REGISTRY:-}"
IMAGES=(fiberstack-operator fiber-probe fiber-ingest fiber-etl)
out="$root/target/images"
cargo=yes
while (($#)); do
  case "$1" in
    --push) registry=${2:?--push needs a registry host:port}; shift 2 ;;
    --no-push) registry=""; shift ;;
    --only)
      [[ " ${IMAGES[*]} " == *" ${2:-} "* ]] || { echo "images: --only takes one of ${IMAGES[*]}" >&2; exit 2; }
      IMAGES=("$2"); shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --no-cargo) cargo=no; shift ;;
    -h | --help) sed -n '2,/^[^#]/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "images: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$registry" ]] && ! curl -sf --max-time 5 "http://$registry/v2/" >/dev/null; then
  echo "images: the registry $registry does not answer; building without pushing" >&2
  registry=""
fi
version=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/fiberstack/Chart.yaml)
[[ -n "$version" ]] || { echo "images: no appVersion in charts/fiberstack/Chart.yaml" >&2; exit 1; }
source_url=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# A build from uncommitted changes is not that revision: say so in the label.
if [[ "$revision" != unknown ]] && ! git diff --quiet HEAD -- . ':!target' 2>/dev/null; then
  revision="$revision-dirty"
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$out"

command -v buildah >/dev/null || {
  echo "images: buildah is not installed (apt-get install buildah; make env-up installs it)" >&2
  exit 1
}
bh() { buildah --storage-driver vfs "$@"; }

start=$SECONDS
# Always the four packages together, even for --only: cargo unifies features over the
# packages of one invocation, so building one alone gives a different binary (and digest).
if [[ $cargo == yes ]]; then
  echo "images: cargo build --release"
  cargo build --release --locked --bins \
    -p fiberstack-operator -p fiber-probe -p fiber-ingest -p fiber-etl
  echo "images: release binaries built in $((SECONDS - start))s"
fi

tsv="$out/images.tsv.tmp"
printf 'name\tversion\tdigest\tbytes\treference\n' >"$tsv"
for name in "${IMAGES[@]}"; do
  t=$SECONDS
  rootfs="$out/rootfs/$name"
  bash images/rootfs.sh "$target_dir/release/$name" "$rootfs"
  ctr=$(bh from --quiet scratch)
  trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
  bh copy --quiet --chown 0:0 "$ctr" "$rootfs/" / >/dev/null
  bh config \
    --entrypoint "[\"/usr/local/bin/$name\"]" \
    --user 65532:65532 --workingdir / \
    --env PATH=/usr/local/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.source=$source_url" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --created-by "images/build.sh" \
    "$ctr"
  bh commit --quiet --rm --format oci --timestamp 0 --identity-label=false "$ctr" \
    "localhost/fiberstack/$name:$version" >/dev/null
  trap - EXIT
  # The archive's layers are gzip-compressed exactly as a registry push compresses them, so
  # its manifest digest is the digest the image has in a registry.
  rm -f "$out/$name.tar"
  bh push --quiet --digestfile "$out/$name.digest" "localhost/fiberstack/$name:$version" \
    "oci-archive:$out/$name.tar:fiberstack/$name:$version"
  digest=$(cat "$out/$name.digest")
  reference="-"
  if [[ -n "$registry" ]]; then
    bh push --quiet --tls-verify=false --digestfile "$out/$name.pushed" \
      "localhost/fiberstack/$name:$version" "docker://$registry/fiberstack/$name:$version"
    pushed=$(cat "$out/$name.pushed")
    if [[ "$pushed" != "$digest" ]]; then
      echo "images: $name pushed as $pushed but its archive is $digest" >&2
      exit 1
    fi
    reference="$registry/fiberstack/$name@$digest"
  fi
  bytes=$(stat -c %s "$out/$name.tar")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$version" "$digest" "$bytes" "$reference" >>"$tsv"
  unpacked=$(du -sb "$rootfs" | cut -f1)
  awk -v n="$name" -v d="$digest" -v c="$bytes" -v u="$unpacked" -v s="$((SECONDS - t))" \
    'BEGIN { printf "images: %-20s %s  %5.1f MiB compressed, %5.1f MiB unpacked  (%ss)\n", n, d, c / 1048576, u / 1048576, s }'
done
mv "$tsv" "$out/images.tsv"
# Earlier builds of the same tags are left untagged in the vfs store: drop them.
bh rmi --prune >/dev/null 2>&1 || true
echo "images: done in $((SECONDS - start))s; archives and images.tsv in $out"
