#!/usr/bin/env bash
# Checks the Docker demo as a new user meets it: compose/up.sh on a copy of the example
# (RonDB-attached: the stand-in's programs under supervisord in the VM containers), wait
# for AT_DESIRED_STATE with the containers by role, only the cloud front holding the
# Docker socket, write 1,000 rows through a MySQL server
# the status lists, edit and save the file (one more MySQLd), wait for the new container,
# stop every container (a host restart) and run compose/up.sh again: the same containers
# resume with every row; then compose/down.sh must leave nothing.
# --terraform: the same with compose/up.sh --terraform (the front makes the VMs through
# Terraform), and after every step Terraform's state names exactly the VM containers.
set -euo pipefail
TERRAFORM_FLAG=()
if [ "${1:-}" = --terraform ]; then TERRAFORM_FLAG=(--terraform); fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
export NDB_AGENT_HTTP_PORT=${NDB_AGENT_HTTP_PORT:-18181}
# compose/up.sh copies the cluster's API token here.
export NDB_AGENT_TOKEN_FILE=$WORK/api-token
TOKEN_FILE=$NDB_AGENT_TOKEN_FILE
# ... and the cluster CA: the API leaves the container, so it is HTTPS.
export NDB_AGENT_CA_FILE=$WORK/ca.pem
api() { # PATH [curl options]: the bootstrap agent's API as a user reaches it
  local path=$1; shift
  curl -s --cacert "$NDB_AGENT_CA_FILE" --resolve "ndb-agent:$NDB_AGENT_HTTP_PORT:127.0.0.1" "$@" "https://ndb-agent:$NDB_AGENT_HTTP_PORT$path"
}
trap '"$ROOT/compose/down.sh" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
cp "$ROOT/compose/desired_state.jsonc" "$WORK/desired_state.jsonc"
"$ROOT/scripts/build-release.sh"
ROWS=$ROOT/target/release/sql-rows
"$ROOT/compose/up.sh" "${TERRAFORM_FLAG[@]}" "$WORK/desired_state.jsonc" >/dev/null

count() { docker ps -q --filter label=managed-rondb.cluster=managed-rondb --filter "label=managed-rondb.role=$1" | wc -l; }
vm_containers() { docker ps -a --filter label=managed-rondb.cluster=managed-rondb --format '{{.Label "managed-rondb.vm"}} {{.Label "managed-rondb.role"}}' | awk '$2 ~ /^(mgmd|ndbd|mysqld|api)$/ {print $1}' | sort; }
state_matches() {
  [ ${#TERRAFORM_FLAG[@]} = 0 ] && return 0
  local state
  state=$(docker exec cloud_front terraform -chdir=/var/lib/cloud-front/clusters/managed-rondb/terraform state list | sed -n 's/.*\["\(.*\)"\]/\1/p' | sort)
  [ "$state" = "$(vm_containers)" ] || { echo "Terraform's state and the VM containers differ:" >&2; diff <(echo "$state") <(vm_containers) >&2; return 1; }
}
wait_for() { # ID MYSQLDS
  for _ in $(seq 1 240); do
    if api /status -f -H "Authorization: Bearer $(cat "$TOKEN_FILE" 2>/dev/null)" 2>/dev/null \
        | grep -q "\"reconciliation_state\":\"AT_DESIRED_STATE\",\"accepted_id\":$1," \
       && [ "$(count mysqld)" = "$2" ] && [ "$(count ndbd)" = 4 ] && [ "$(count mgmd)" = 1 ] && [ "$(count api)" = 1 ]; then
      state_matches
      return
    fi
    sleep 0.5
  done
  local keep="$ROOT/target/docker-demo-smoke-logs"
  mkdir -p "$keep"
  for c in $(docker ps -a --format '{{.Names}}' --filter label=managed-rondb.cluster=managed-rondb) bootstrap_agent cloud_front; do
    docker logs "$c" >"$keep/$c.log" 2>&1 || true
  done
  echo "desired state $1 not reached; every container's log is in $keep; bootstrap log:" >&2
  docker logs --tail 30 bootstrap_agent >&2
  echo "cloud front log:" >&2
  docker logs --tail 15 cloud_front >&2
  return 1
}
t0=$(date +%s.%N)
wait_for 1 2
printf '== docker demo%s: desired state 1 reached (4 ndbd, 1 mgmd, 2 mysqld, 1 api containers) in %.1f s\n' "${TERRAFORM_FLAG[*]:+ (terraform)}" "$(echo "$(date +%s.%N) - $t0" | bc)"
holders=$(docker ps -aq --filter label=managed-rondb.cluster=managed-rondb \
  | xargs docker inspect -f '{{.Name}} {{range .Mounts}}{{.Source}} {{end}}' | awk '/docker.sock/ {print $1}')
[ "$holders" = /cloud_front ] || { echo "containers holding the Docker socket: $holders (only cloud_front should)" >&2; exit 1; }
echo "== docker demo: only the cloud front holds the Docker socket; the VMs were made through it"
[ "$(stat -c %a "$TOKEN_FILE")" = 600 ] || { echo "compose/up.sh left the API token readable by others" >&2; exit 1; }
code=$(api /status -o /dev/null -w '%{http_code}')
[ "$code" = 401 ] || { echo "GET /status without the token answered $code, not 401" >&2; exit 1; }
echo "== docker demo: the API answers 401 without the cluster's token"
if curl -s -o /dev/null -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "http://127.0.0.1:$NDB_AGENT_HTTP_PORT/status"; then
  echo "the API answered plain HTTP; it leaves the container, so it must be HTTPS only" >&2; exit 1
fi
if curl -s -o /dev/null --resolve "ndb-agent:$NDB_AGENT_HTTP_PORT:127.0.0.1" "https://ndb-agent:$NDB_AGENT_HTTP_PORT/health"; then
  echo "a client trusting other CAs than the cluster's accepted the API's certificate" >&2; exit 1
fi
# Read whole, not piped into `grep -q`: grep would close the pipe while status still prints.
status=$("$ROOT/target/release/ndb-agent" status --endpoint "https://127.0.0.1:$NDB_AGENT_HTTP_PORT" --token-file "$TOKEN_FILE" --ca-file "$NDB_AGENT_CA_FILE") \
  && grep -q '^reconciliation: AT_DESIRED_STATE' <<<"$status" \
  || { echo "ndb-agent status over HTTPS with the cluster CA failed: $status" >&2; exit 1; }
echo "== docker demo: the API is HTTPS only (plain HTTP and other CAs refused); ndb-agent status checks it against the cluster CA"
# The cloud front's VM API carries the cluster's credential across the network: HTTPS only
# too, with a certificate of the same cluster CA.
FRONT=10.213.0.4:9090
if curl -s -o /dev/null "http://$FRONT/health"; then
  echo "the cloud front answered plain HTTP on the cluster's network" >&2; exit 1
fi
[ "$(curl -s --cacert "$NDB_AGENT_CA_FILE" --resolve "ndb-agent:9090:${FRONT%:*}" https://ndb-agent:9090/health)" = ok ] \
  || { echo "the cloud front did not answer HTTPS checked against the cluster CA" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$NDB_AGENT_CA_FILE" --resolve "ndb-agent:9090:${FRONT%:*}" https://ndb-agent:9090/v1/clusters/managed-rondb/vms)
[ "$code" = 401 ] || { echo "the cloud front's VM API answered $code without the credential, not 401" >&2; exit 1; }
echo "== docker demo: the cloud front's VM API is HTTPS only, of the cluster CA, and answers 401 without the credential"
endpoint() { api /status -f -H "Authorization: Bearer $(cat "$TOKEN_FILE" 2>/dev/null)" | python3 -c 'import json,sys; e=json.load(sys.stdin)["mysqld_endpoints"]; print(e[0] if e else "")'; }
"$ROWS" write "$(endpoint)" 0 1000
# The user edits and saves the file: one more MySQLd.
sed -i -e 's/^  "Id": 1,/  "Id": 2,/' -e 's/"NumManagedMysqldVms": 2,/"NumManagedMysqldVms": 3,/' "$WORK/desired_state.jsonc"
wait_for 2 3
echo "== docker demo: the saved edit was followed (3 mysqld containers)"
"$ROWS" check "$(endpoint)" 1000
# A host restart: every container stops; compose/up.sh brings back the same ones.
containers() { docker ps -aq --no-trunc --filter label=managed-rondb.cluster=managed-rondb | sort; }
before=$(containers)
docker stop -t 5 $(docker ps -q --filter label=managed-rondb.cluster=managed-rondb) >/dev/null
[ -z "$(docker ps -q --filter label=managed-rondb.cluster=managed-rondb)" ] || { echo "containers still running after docker stop" >&2; exit 1; }
"$ROOT/compose/up.sh" "${TERRAFORM_FLAG[@]}" "$WORK/desired_state.jsonc" >/dev/null
wait_for 2 3
[ "$(containers)" = "$before" ] || { echo "containers were replaced after the restart:" >&2; diff <(echo "$before") <(containers) >&2; exit 1; }
"$ROWS" check "$(endpoint)" 1000
echo "== docker demo: every container stopped (a host restart); compose/up.sh resumed the same containers, every row read back"
"$ROOT/compose/down.sh"
left=$(docker ps -aq --filter label=managed-rondb.cluster=managed-rondb; docker volume ls -q --filter label=managed-rondb.cluster=managed-rondb; docker network ls -q --filter name=managed-rondb)
[ -z "$left" ] || { echo "compose/down.sh left: $left" >&2; exit 1; }
echo "== docker demo: compose/down.sh left nothing"
