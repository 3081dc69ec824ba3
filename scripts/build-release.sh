#!/usr/bin/env bash
# The one release build of the programs every script runs: ndb-agent, the RonDB stand-in
# (rondb-standin) and the test tools (sql-rows). Every script builds through this one Cargo
# invocation: Cargo unifies dependency features over the packages it is given, so another
# package selection compiles the shared dependencies again with other features (in CI each
# selection cost a full release build of them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p ndb-agent -p rondb-standin -p integration-tests --bins
