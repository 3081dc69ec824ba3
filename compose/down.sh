#!/usr/bin/env bash
# Removes every container, volume and network of the Docker demo, including the VMs the
# agents created (found by the label managed-rondb.cluster=managed-rondb).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=${CLUSTER:-managed-rondb}
DESIRED_STATE_DIR=$HERE docker-compose -p managed-rondb -f "$HERE/docker-compose.yml" down -v --remove-orphans >/dev/null 2>&1
ids=$(docker ps -aq --filter "label=managed-rondb.cluster=$CLUSTER")
[ -n "$ids" ] && docker rm -f -v $ids >/dev/null
vols=$(docker volume ls -q --filter "label=managed-rondb.cluster=$CLUSTER")
[ -n "$vols" ] && docker volume rm -f $vols >/dev/null
nets=$(docker network ls -q --filter "label=managed-rondb.cluster=$CLUSTER")
[ -n "$nets" ] && docker network rm $nets >/dev/null
left=$(docker ps -aq --filter "label=managed-rondb.cluster=$CLUSTER"; docker volume ls -q --filter "label=managed-rondb.cluster=$CLUSTER"; docker network ls -q --filter "label=managed-rondb.cluster=$CLUSTER")
if [ -n "$left" ]; then echo "not removed: $left" >&2; exit 1; fi
# The token of a cluster that is gone opens nothing any more.
rm -f "${NDB_AGENT_TOKEN_FILE:-$HERE/api-token}" "${NDB_AGENT_CA_FILE:-$HERE/ca.pem}"
echo "removed every container, volume and network of cluster $CLUSTER"
