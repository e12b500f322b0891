#!/usr/bin/env bash
# Deletes the debug test executables of earlier builds from the cargo target directory. CI keeps the
# target directory between runs (it holds the compiled dependencies), and every change to the
# workspace leaves a new copy of each test binary there (100–300 MB each, with debug info):
# unpruned it filled this machine's disk (60 GB), the kubelets of the environment reported
# DiskPressure and evicted the test pods. Keeps every executable the current build lists, the
# binaries cargo has linked out of deps/ (target/debug/fiber-etl and the like: a second hard
# link), and anything younger than PRUNE_MIN_AGE_MINUTES (360): another checkout may use it.
#
#   bash e2e/scripts/prune-target.sh      after `cargo test --workspace --no-run`
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
age="${PRUNE_MIN_AGE_MINUTES:-360}"
deps="$target/debug/deps"
[[ -d "$deps" ]] || exit 0

keep="$(mktemp)"
trap 'rm -f "$keep"' EXIT
# Every test and binary executable of the current build (fresh or rebuilt).
cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//' | xargs -r -n1 basename |
  sort -u >"$keep"
if [[ ! -s "$keep" ]]; then
  echo "prune: the build listed no executables; nothing deleted"
  exit 0
fi

freed=0 count=0
while IFS= read -r -d '' file; do
  name="$(basename "$file")"
  grep -qxF "$name" "$keep" && continue
  size=$(stat -c %s "$file")
  rm -f "$file" "${file}.d"
  freed=$((freed + size)) count=$((count + 1))
done < <(find "$deps" -maxdepth 1 -type f ! -name '*.*' -perm -u+x -links 1 \
  -mmin "+$age" -print0 2>/dev/null)
echo "prune: deleted $count old test executables, $((freed / 1024 / 1024)) MiB; $(df -h "$target" | awk 'NR == 2 { print $4 }') free"
