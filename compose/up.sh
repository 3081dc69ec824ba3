#!/usr/bin/env bash
# The Docker demo: compose/up.sh [--detached] [--terraform] [DESIRED_STATE_FILE]
#
# Builds the images if missing (no registry: debootstrap + docker import), then starts the
# cloud front (the only container holding the Docker socket: it makes the VM containers when
# the cluster's leader asks), the bootstrap agent and the artifact server with
# docker-compose. RonDB-attached by default:
# the VM containers run RonDB's programs under supervisord (the stand-in's tarballs, served
# by the artifact server); --detached pretends them (dummy runtime). --terraform: the front
# makes the VM containers through Terraform (the local-docker target; its state in the
# front's volume; image compose/images/build-front.sh). The bootstrap
# agent applies DESIRED_STATE_FILE (default compose/desired_state.jsonc) and follows every
# saved edit of it. `docker logs -f bootstrap_agent` shows the progress; the HTTP API is on
# https://127.0.0.1:${NDB_AGENT_HTTP_PORT:-8181} (HTTPS: it leaves the container; compose/up.sh
# copies the cluster CA to compose/ca.pem); compose/down.sh removes everything. Run again after
# a host restart: the bootstrap agent starts every stopped VM container and the same cluster
# resumes (every container has a fixed address on the network; the bootstrap agent asks the
# front to start the VM containers). The API needs the cluster's
# token: compose/up.sh copies it to compose/api-token (0600; NDB_AGENT_TOKEN_FILE elsewhere).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# --detached: the RonDB-detached demo (the agents pretend RonDB's programs: dummy runtime).
export NDB_AGENT_RUNTIME=supervisord NDB_FRONT_PROVIDER=docker NDB_FRONT_IMAGE=managed-rondb/ndb-agent:latest
while [ $# -gt 0 ]; do
  case "$1" in
    --detached) NDB_AGENT_RUNTIME=dummy; shift ;;
    --terraform) NDB_FRONT_PROVIDER=terraform NDB_FRONT_IMAGE=managed-rondb/cloud-front:latest; shift ;;
    -*) echo "unknown option $1 (compose/up.sh [--detached] [--terraform] [FILE])" >&2; exit 2 ;;
    *) break ;;
  esac
done
FILE=${1:-$HERE/desired_state.jsonc}
[ -f "$FILE" ] || { echo "no desired-state file $FILE" >&2; exit 2; }
FILE=$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")
"$HERE/images/build.sh"
if [ "$NDB_FRONT_PROVIDER" = terraform ]; then "$HERE/images/build-front.sh"; fi
export DESIRED_STATE_DIR=$(dirname "$FILE") DESIRED_STATE_NAME=$(basename "$FILE")
docker-compose -p managed-rondb -f "$HERE/docker-compose.yml" up -d
# The API's token: the bootstrap agent makes it in its volume on the first run; a private
# copy here is what the CLI and curl read.
TOKEN_FILE=${NDB_AGENT_TOKEN_FILE:-$HERE/api-token}
# The API leaves the container, so it is HTTPS: clients check it against the cluster CA,
# copied to compose/ca.pem (NDB_AGENT_CA_FILE elsewhere).
CA_FILE=${NDB_AGENT_CA_FILE:-$HERE/ca.pem}
for _ in $(seq 1 240); do
  docker exec bootstrap_agent test -s /var/lib/ndb-agent/api-token 2>/dev/null \
    && docker exec bootstrap_agent test -s /var/lib/ndb-agent/tls/ca.pem 2>/dev/null && break
  sleep 0.5
done
(umask 077 && docker exec bootstrap_agent cat /var/lib/ndb-agent/api-token >"$TOKEN_FILE.tmp") \
  && mv "$TOKEN_FILE.tmp" "$TOKEN_FILE" \
  || { echo "the bootstrap agent wrote no API token; see docker logs bootstrap_agent" >&2; exit 1; }
docker exec bootstrap_agent cat /var/lib/ndb-agent/tls/ca.pem >"$CA_FILE.tmp" \
  && mv "$CA_FILE.tmp" "$CA_FILE" \
  || { echo "the bootstrap agent holds no cluster CA; see docker logs bootstrap_agent" >&2; exit 1; }
PORT=${NDB_AGENT_HTTP_PORT:-8181}
cat <<MSG

The bootstrap agent follows $FILE: edit and save it (raise "Id" each time).
  progress:  docker logs -f bootstrap_agent
  status:    target/release/ndb-agent status --endpoint https://127.0.0.1:$PORT --token-file $TOKEN_FILE --ca-file $CA_FILE
             (or: curl -s --cacert $CA_FILE --resolve ndb-agent:$PORT:127.0.0.1 -H "Authorization: Bearer \$(cat $TOKEN_FILE)" https://ndb-agent:$PORT/status)
  token:     $TOKEN_FILE (mode 0600): the API answers nothing but /health without it
  CA:        $CA_FILE: the API is HTTPS; every agent's certificate is of this CA and names ndb-agent
  VMs:       docker ps --filter label=managed-rondb.cluster=managed-rondb
  front:     docker logs -f cloud_front (makes and deletes the VM containers)
  restart:   after a host restart (containers stopped), run $0 again: the same cluster resumes
  remove:    $HERE/down.sh
MSG
