#!/usr/bin/env bash
# rootfs.sh BINARY OUT: lays out the root filesystem of one FiberStack image in OUT — the
# binary at /usr/local/bin/<name>, the few shared libraries it links (glibc's loader, libc,
# libm, libgcc_s: the workspace uses rustls, so no OpenSSL), CA certificates, and a passwd and
# group naming uid/gid 65532 (nonroot). No shell, no package manager, nothing else.
#
# One layout for both builders: images/build.sh (buildah, `make images`) and the root
# Dockerfile's build stage call this script, so the two produce the same files.
set -euo pipefail
bin=${1:?usage: rootfs.sh BINARY OUT}
out=${2:?usage: rootfs.sh BINARY OUT}
name=$(basename "$bin")
[[ -x "$bin" ]] || { echo "rootfs: $bin is not an executable (build it first: cargo build --release)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
install -m 0755 "$bin" "$out/usr/local/bin/$name"

# The shared libraries, at the paths the binary's loader looks for them. A library ldd cannot
# find would make the image fail at start: refuse to build it instead.
ldd "$bin" | while read -r line; do
  case "$line" in
    *"not found"*) echo "rootfs: $name links a library that is not installed: $line" >&2; exit 1 ;;
    *"=> /"*) lib=$(echo "$line" | sed -E 's/.*=> (\/[^ ]+).*/\1/') ;;
    /*) lib=$(echo "$line" | sed -E 's/^(\/[^ ]+).*/\1/') ;;
    *) continue ;; # linux-vdso: provided by the kernel
  esac
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
  chmod 0755 "$out$lib"
done

ca=/etc/ssl/certs/ca-certificates.crt
[[ -f "$ca" ]] || { echo "rootfs: $ca is missing (apt-get install ca-certificates)" >&2; exit 1; }
install -m 0644 "$ca" "$out/etc/ssl/certs/ca-certificates.crt"

cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$out/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
echo "hosts: files dns" >"$out/etc/nsswitch.conf"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"
# /tmp exists (sticky, world-writable) for a runtime that mounts nothing there; with a
# read-only root filesystem nothing can be written to it anyway.
chmod 1777 "$out/tmp"
# Same inputs, same layer: every timestamp is the epoch.
find "$out" -exec touch -h -d @0 {} +
