#!/usr/bin/env bash
# The test command of the README: every test of the workspace (unit, table-driven, property,
# generative and regression-corpus tests). Needs only a Rust toolchain; Cargo fetches the rest.
# GENERATIVE_TRANSITIONS=N raises the number of random desired-state transitions.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
# Release mode: the generative tests run thousands of reconciliations.
cargo test --workspace --release --locked "$@"
