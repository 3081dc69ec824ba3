#!/usr/bin/env bash
# README command 1: a managed RonDB cluster on this machine.
#
#   scripts/up.sh [DESIRED_STATE_FILE] [ndb-agent up options...]
#
# Builds ndb-agent and the RonDB stand-in (scripts/build-release.sh), packs the stand-in as RonDB tarballs (both
# versions the examples use; cached, rebuilt only when the stand-in changes) into
# target/rondb-tarballs/, and runs `ndb-agent up` with the direct runtime: every VM is an
# agent process with a loopback address of its own, running RonDB's programs. The desired
# state's links name the Docker demo's artifact server (http://artifacts:8080/rondb/...);
# here that prefix is mirrored to the directory of tarballs, so the same files serve both.
# To run real RonDB, put its tarballs (and their .sha256) in RONDB_TARBALLS=DIR: nothing
# is built or packed then.
set -euo pipefail
cd "$(dirname "$0")/.."

desired=compose/desired_state.jsonc
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    desired=$1
    shift
fi

./scripts/build-release.sh
tarballs=${RONDB_TARBALLS:-}
if [ -z "$tarballs" ]; then
    tarballs=target/rondb-tarballs
    echo "== packing the RonDB stand-in as RonDB 22.10.1 and 22.10.2 tarballs (tests/rondb-standin/package.sh)"
    ./tests/rondb-standin/package.sh "$tarballs" 22.10.1 22.10.2 | sed 's/^/   /'
fi
tarballs=$(cd "$tarballs" && pwd)

exec target/release/ndb-agent up --runtime direct \
    --artifact-mirror "http://artifacts:8080/rondb/=file://$tarballs/" \
    --desired-state "$desired" "$@"
