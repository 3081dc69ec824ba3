#!/usr/bin/env bash
# The Docker demo: compose/up.sh [--detached] [DESIRED_STATE_FILE]
#
# Builds the images if missing (no registry: debootstrap + docker import), then starts the
# bootstrap agent and the artifact server with docker-compose. RonDB-attached by default:
# the VM containers run RonDB's programs under supervisord (the stand-in's tarballs, served
# by the artifact server); --detached pretends them (dummy runtime). The bootstrap
# agent applies DESIRED_STATE_FILE (default compose/desired_state.jsonc) and follows every
# saved edit of it. `docker logs -f bootstrap_agent` shows the progress; the HTTP API is on
# 127.0.0.1:${NDB_AGENT_HTTP_PORT:-8181}; compose/down.sh removes everything. Run again after
# a host restart: the bootstrap agent starts every stopped VM container and the same cluster
# resumes (every container has a fixed address on the network).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# --detached: the RonDB-detached demo (the agents pretend RonDB's programs: dummy runtime).
export NDB_AGENT_RUNTIME=supervisord
if [ "${1:-}" = "--detached" ]; then
  NDB_AGENT_RUNTIME=dummy
  shift
fi
FILE=${1:-$HERE/desired_state.jsonc}
[ -f "$FILE" ] || { echo "no desired-state file $FILE" >&2; exit 2; }
FILE=$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")
"$HERE/images/build.sh"
export DESIRED_STATE_DIR=$(dirname "$FILE") DESIRED_STATE_NAME=$(basename "$FILE")
docker-compose -p managed-rondb -f "$HERE/docker-compose.yml" up -d
cat <<MSG

The bootstrap agent follows $FILE: edit and save it (raise "Id" each time).
  progress:  docker logs -f bootstrap_agent
  status:    curl -s http://127.0.0.1:${NDB_AGENT_HTTP_PORT:-8181}/status
             (or: target/release/ndb-agent status --endpoint 127.0.0.1:${NDB_AGENT_HTTP_PORT:-8181})
  VMs:       docker ps --filter label=managed-rondb.cluster=managed-rondb
  restart:   after a host restart (containers stopped), run $0 again: the same cluster resumes
  remove:    $HERE/down.sh
MSG
