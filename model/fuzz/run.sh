#!/usr/bin/env bash
# The coverage-guided fuzz targets of the wire contracts (libFuzzer via cargo-fuzz), each for
# FUZZ_SECONDS (30). `make test` runs it. The corpus is kept between runs in
# ~/.cache/fiberstack/fuzz-corpus/<target> (seeded from seeds/), so each run explores further
# than the last; a crash fails the run and leaves its input in
# ~/.cache/fiberstack/fuzz-artifacts/<target>/ (replay: cargo +nightly fuzz run <target> <file>).
#
#   bash model/fuzz/run.sh                 all targets
#   FUZZ_SECONDS=600 bash model/fuzz/run.sh batch
#
# Needs a nightly toolchain (libFuzzer's instrumentation flags); cargo-fuzz is installed from
# crates.io when missing. Without a nightly toolchain it says SKIPPED and succeeds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-30}"
cache="$HOME/.cache/fiberstack"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(batch binary_batch push probe_config)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

cd "$here/.."
export CARGO_TARGET_DIR="$cache/fuzz-target"
cargo +nightly fuzz build -O 2>&1 | tail -1
failed=()
for target in "${targets[@]}"; do
  corpus="$cache/fuzz-corpus/$target"
  artifacts="$cache/fuzz-artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  cp -n "$here/seeds/$target/"* "$corpus/"
  log="$(mktemp)"
  if cargo +nightly fuzz run -O "$target" "$corpus" -- \
      -max_total_time="$seconds" -dict="$here/json.dict" -max_len=8192 \
      -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz: $target: ${runs:-?} inputs in ${seconds}s, $cov, corpus $(ls "$corpus" | wc -l), no crash"
  else
    echo "fuzz: $target: FAILED"
    grep -E "panicked|assertion|left:|right:|Test unit written|SUMMARY" "$log" | head -20
    failed+=("$target")
  fi
  rm -f "$log"
done
[[ ${#failed[@]} -eq 0 ]] || { echo "fuzz: crashes in ${failed[*]}"; exit 1; }
