#!/usr/bin/env bash
# `make test`: formatting, lints and every test, against the real parts of the local
# environment, which it brings up first (and leaves running: `make env-down` stops it).
# Prints how long each slow step took.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

# CI runs from a fresh clone each time: keep the compiled dependencies outside it.
if [[ "${CI:-}" == true && -z "${CARGO_TARGET_DIR:-}" ]]; then
  export CARGO_TARGET_DIR="$HOME/.cache/fiberstack/cargo-target"
  # Incremental state is per checkout path and only grows: a fresh clone cannot reuse it.
  export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

timed() {
  local label=$1 start=$SECONDS rc=0
  shift
  echo "==> $label"
  "$@" || rc=$?
  echo "==> $label: $((SECONDS - start))s"
  return "$rc"
}

total=$SECONDS
# CI's next run starts from another fresh clone, which could not stop what this one left
# running (and would find its ports taken): in CI, stop the environment on the way out.
if [[ "${CI:-}" == true ]]; then
  trap 'echo "==> env-down"; bash e2e/scripts/env.sh down' EXIT
fi
timed "env-up" bash e2e/scripts/env.sh up
timed "cargo fmt --check" cargo fmt --all -- --check
timed "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# The images the tests inspect and the real nodes run (pushed to the environment's registry).
timed "make images" bash images/build.sh
timed "cargo build tests" cargo test --workspace --locked --no-run
timed "prune old test executables" bash e2e/scripts/prune-target.sh
results="$(mktemp)"
# --no-fail-fast: every test binary runs and is counted, even after one fails.
timed "cargo test" bash -o pipefail -c 'cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$1"' _ "$results" ||
  status=$?
# Coverage-guided fuzzing of the wire contracts, 30 s per target (model/fuzz/run.sh).
timed "fuzz" bash model/fuzz/run.sh || status=$?
# One closing line for the whole run: cargo prints a result line per test binary, and the
# last of them (doc tests) often counts none.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' \
  "${results}"
rm -f "$results"
echo "==> make test: $((SECONDS - total))s in all"
exit "${status:-0}"
