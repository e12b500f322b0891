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
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

timed() {
  local label=$1 start=$SECONDS
  shift
  echo "==> $label"
  "$@"
  echo "==> $label: $((SECONDS - start))s"
}

total=$SECONDS
timed "env-up" bash e2e/scripts/env.sh up
timed "cargo fmt --check" cargo fmt --all -- --check
timed "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
timed "cargo build tests" cargo test --workspace --locked --no-run
timed "cargo test" cargo test --workspace --locked
echo "==> make test: $((SECONDS - total))s in all"
