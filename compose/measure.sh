#!/usr/bin/env bash
# Measures the Docker demo: image build time, time from `compose/up.sh` to
# AT_DESIRED_STATE for compose/desired_state.jsonc (8 VMs), and the containers' own start
# time for as many containers of the same image (so the agents' overhead is the difference).
# `--cold` removes the demo's images first (the base image is rebuilt with debootstrap).
# The dummy runtime runs without its demo delay (NDB_DUMMY_PROGRAM_DELAY_MS=0).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${NDB_AGENT_HTTP_PORT:-8181}
TOKEN_FILE=${NDB_AGENT_TOKEN_FILE:-$HERE/api-token}
CA_FILE=${NDB_AGENT_CA_FILE:-$HERE/ca.pem}
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
"$HERE/down.sh" >/dev/null 2>&1 || true
if [ "${1:-}" = "--cold" ]; then
  docker rmi -f $(docker images -q 'managed-rondb/*' | sort -u) >/dev/null 2>&1 || true
fi
t=$(now); "$HERE/images/build.sh" >/dev/null 2>&1; BUILD=$(since "$t")

t=$(now)
NDB_DUMMY_PROGRAM_DELAY_MS=0 "$HERE/up.sh" >/dev/null 2>&1
until curl -sf --cacert "$CA_FILE" --resolve "ndb-agent:$PORT:127.0.0.1" -H "Authorization: Bearer $(cat "$TOKEN_FILE" 2>/dev/null)" "https://ndb-agent:$PORT/status" 2>/dev/null | grep -q '"reconciliation_state":"AT_DESIRED_STATE","accepted_id":1'; do
  sleep 0.2
  if [ "$(echo "$(since "$t") > 300" | bc)" = 1 ]; then echo "not at the desired state after 300 s" >&2; "$HERE/down.sh"; exit 1; fi
done
CLUSTER=$(since "$t")
VMS=$(docker ps -q --filter label=managed-rondb.cluster=managed-rondb --filter label=managed-rondb.vm | wc -l)
"$HERE/down.sh" >/dev/null

# Baseline: the same number of containers of the agent image, started one after the other
# (as the agents create them per wave) with nothing to do.
t=$(now)
for i in $(seq 1 "$((VMS - 1))"); do
  docker run -d --name "measure-$i" --label managed-rondb.cluster=measure managed-rondb/ndb-agent:latest sleep infinity >/dev/null
done
BASE=$(since "$t")
docker rm -f $(docker ps -aq --filter label=managed-rondb.cluster=measure) >/dev/null

printf 'images built in %.1f s%s\n' "$BUILD" "$([ "${1:-}" = --cold ] && echo ' (cold: debootstrap + agent + artifact images)' || echo ' (cached)')"
printf 'cluster of %d VM containers (+ bootstrap, artifact server) at AT_DESIRED_STATE %.1f s after compose/up.sh\n' "$((VMS - 1))" "$CLUSTER"
printf 'the same number of bare containers of that image started in %.1f s; agents and reconciliation add %.1f s\n' "$BASE" "$(echo "$CLUSTER - $BASE" | bc)"
