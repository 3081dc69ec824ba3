#!/usr/bin/env bash
# Runs the README's main job for real and checks it as its user would: scripts/up.sh (local
# provider: every VM an agent process; direct runtime running the RonDB stand-in's
# programs), waits for AT_DESIRED_STATE, writes 1,000 rows through a MySQL server that
# `status` lists, then applies the live operations of compose/examples/ one by one through
# the HTTP API, waits for each and reads every row back; then stops every agent and RonDB
# program (`ndb-agent down`, as a reboot would) and runs the same command again: the same
# cluster (same VMs) must come back at the last desired state with every row. Cleans up
# every agent it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-release.sh
BIN=target/release/ndb-agent
ROWS=target/release/sql-rows
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18181)
EP=127.0.0.1:$PORT
cleanup() {
  kill "$UP_PID" 2>/dev/null || true
  "$BIN" down --data-dir "$DIR/data" --remove >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
./scripts/up.sh --data-dir "$DIR/data" --http "$EP" >"$DIR/up.log" 2>&1 &
UP_PID=$!

wait_for() { # ID: waits until desired state ID is reached, via any live agent
  local id=$1
  for _ in $(seq 1 480); do
    if "$BIN" status --endpoint "$EP" --token-file "$DIR/data/api-token" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = s["accepted_id"] == int(sys.argv[1]) and s["pending_id"] is None and s["reconciliation_state"] == "AT_DESIRED_STATE"
sys.exit(0 if ok else 1)' "$id" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "desired state $id not reached in 240 s; last status and log:" >&2
  "$BIN" status --endpoint "$EP" --token-file "$DIR/data/api-token" >&2 || true
  tail -40 "$DIR/up.log" >&2
  return 1
}

t0=$(date +%s.%N)
wait_for 1
printf '== up: desired state 1 (compose/desired_state.jsonc) reached in %.1f s (the build and the stand-in tarballs were ready by then)\n' "$(echo "$(date +%s.%N) - $t0" | bc)"
# The API is the cluster's alone: its token is private to the user, and nothing answers
# without it but the health probe.
[ "$(stat -c %a "$DIR/data/api-token")" = 600 ] || { echo "the API token file is not 0600" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$EP/status")
[ "$code" = 401 ] || { echo "GET /status without the token answered $code, not 401" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$DIR/data/api-token")" "http://$EP/status")
[ "$code" = 200 ] || { echo "GET /status with the token answered $code" >&2; exit 1; }
echo "== up: the API answers only with the token of $DIR/data/api-token (0600); 401 without it"
# A MySQL server `status` lists, as a user would pick one.
endpoint() { "$BIN" status --endpoint "$EP" --token-file "$DIR/data/api-token" --json | python3 -c 'import json,sys; e=json.load(sys.stdin)["mysqld_endpoints"]; print(e[0] if e else "")'; }
ep=$(endpoint)
[ -n "$ep" ] || { echo "status lists no MySQL server" >&2; exit 1; }
"$ROWS" write "$ep" 0 1000
for f in compose/examples/*.jsonc; do
  id=$(python3 -c 'import re,sys; print(re.search(r"\"Id\":\s*(\d+)", open(sys.argv[1]).read()).group(1))' "$f")
  t0=$(date +%s.%N)
  "$BIN" apply -f "$f" --endpoint "$EP" --token-file "$DIR/data/api-token"
  wait_for "$id"
  printf '== up: %s (desired state %s) reached in %.1f s\n' "$f" "$id" "$(echo "$(date +%s.%N) - $t0" | bc)"
  "$ROWS" check "$(endpoint)" 1000
done
"$BIN" status --endpoint "$EP" --token-file "$DIR/data/api-token"

# Everything stopped at once, then the same command again: the same cluster resumes.
vms() { "$BIN" status --endpoint "$EP" --token-file "$DIR/data/api-token" --json | python3 -c 'import json,sys; print(" ".join(sorted(v["name"] for v in json.load(sys.stdin)["vms"])))'; }
before=$(vms)
kill "$UP_PID" 2>/dev/null || true
wait "$UP_PID" 2>/dev/null || true
"$BIN" down --data-dir "$DIR/data"
t0=$(date +%s.%N)
./scripts/up.sh --data-dir "$DIR/data" --http "$EP" >>"$DIR/up.log" 2>&1 &
UP_PID=$!
wait_for "$id"
after=$(vms)
[ "$before" = "$after" ] || { echo "a different cluster came back: before [$before], after [$after]" >&2; exit 1; }
grep -q "resuming the existing cluster" "$DIR/up.log" || { echo "up did not say it resumed the cluster" >&2; tail -20 "$DIR/up.log" >&2; exit 1; }
"$ROWS" check "$(endpoint)" 1000
printf '== up: every agent stopped, the same `up` resumed the same cluster (desired state %s, VMs %s) in %.1f s\n' "$id" "$after" "$(echo "$(date +%s.%N) - $t0" | bc)"
