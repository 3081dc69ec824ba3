#!/usr/bin/env bash
# Measures the local RonDB-attached cluster (README command 1's cluster, direct runtime):
#   1. time from `ndb-agent up` to AT_DESIRED_STATE for compose/desired_state.jsonc,
#      attached (direct runtime, the stand-in) vs dummy runtime, RUNS times each;
#   2. the makespan of a rolling restart and of an upgrade of the 2 x 2 cluster against the
#      sum of the stand-in's phase times along the critical path: the data nodes restart
#      one replica of every node group at a time, and a data node's restart is one phase
#      time to stop (four quarter phases) and eight timed start phases (1-3, 5-9; phase 4
#      copies rows), so the path is replicas x 9 x RONDB_STANDIN_PHASE_MS. The management
#      server's and the MySQL servers' restarts have no phase times: what they take is the
#      overhead the ratio shows.
# Usage: scripts/measure-attached.sh [RUNS]   (PHASE_MS=500 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
PHASE_MS=${PHASE_MS:-500}
./scripts/build-release.sh
./tests/rondb-standin/package.sh target/rondb-tarballs 22.10.1 22.10.2 >/dev/null
BIN=target/release/ndb-agent
MIRROR="http://artifacts:8080/rondb/=file://$PWD/target/rondb-tarballs/"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EP=127.0.0.1:$PORT
WORK=$(mktemp -d)
cleanup() {
  [ -n "${UP_PID:-}" ] && kill "$UP_PID" 2>/dev/null || true
  # The bootstrap agent's log of the run (every action with its start and end), to see
  # where the time went.
  cp "$WORK/up.log" target/measure-attached.log 2>/dev/null || true
  "$BIN" down --data-dir "$WORK/data" --remove >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
reached() { # ID
  "$BIN" status --endpoint "$EP" --token-file "$WORK/data/api-token" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["accepted_id"] == int(sys.argv[1]) and s["pending_id"] is None and s["reconciliation_state"] == "AT_DESIRED_STATE" else 1)' "$1" 2>/dev/null
}
wait_for() { for _ in $(seq 1 2400); do reached "$1" && return 0; sleep 0.05; done; echo "desired state $1 not reached" >&2; exit 1; }
start() { # RUNTIME FILE
  local extra=()
  [ "$1" = direct ] && extra=(--artifact-mirror "$MIRROR")
  "$BIN" up --runtime "$1" "${extra[@]}" --desired-state "$2" --data-dir "$WORK/data" --http "$EP" >>"$WORK/up.log" 2>&1 &
  UP_PID=$!
}
stop() { kill "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; UP_PID=; "$BIN" down --data-dir "$WORK/data" --remove >/dev/null; }
# A desired state derived from the example: ID, then python assignments on d.
derive() { # ID EXPR OUT
  python3 - "$1" "$2" "$3" <<'PY'
import json, re, sys
text = open("compose/desired_state.jsonc").read()
text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
text = re.sub(r",(\s*[}\]])", r"\1", text)
d = json.loads(text)
d["Id"] = int(sys.argv[1])
exec(sys.argv[2])
open(sys.argv[3], "w").write(json.dumps(d, indent=2))
PY
}

echo "== up to AT_DESIRED_STATE, compose/desired_state.jsonc (2 x 2, 2 MySQLds, 1 API, 1 mgmd)"
for runtime in dummy direct; do
  times=()
  for _ in $(seq 1 "$RUNS"); do
    t=$(now); start "$runtime" compose/desired_state.jsonc; wait_for 1; times+=("$(since "$t")"); stop
  done
  printf '   %-7s %s s\n' "$runtime" "$(printf '%.2f ' "${times[@]}")"
done

echo "== makespan vs critical path (RONDB_STANDIN_PHASE_MS=$PHASE_MS: a data node start takes 9 x $PHASE_MS ms)"
export RONDB_STANDIN_PHASE_MS=$PHASE_MS
derive 1 "" "$WORK/d1.json"
derive 2 'd["RonDBRunningSince"] = 2' "$WORK/d2.json"
derive 3 'd["RonDBRunningSince"] = 2; d["RonDBVersion"] = "22.10.2"; d["RonDBDownloadLink"] = d["RonDBDownloadLink"].replace("22.10.1", "22.10.2")' "$WORK/d3.json"
start direct "$WORK/d1.json"; wait_for 1
replicas=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ActiveReplicationFactor"])' "$WORK/d1.json")
path=$(echo "$replicas * 9 * $PHASE_MS / 1000" | bc -l)
for step in "2 rolling restart" "3 upgrade 22.10.1 -> 22.10.2"; do
  id=${step%% *}; what=${step#* }
  t=$(now); "$BIN" apply -f "$WORK/d$id.json" --endpoint "$EP" --token-file "$WORK/data/api-token" >/dev/null; wait_for "$id"; took=$(since "$t")
  printf '   %-28s %.2f s; critical path %.2f s (%s replicas x 9 phases); ratio %.2f\n' "$what" "$took" "$path" "$replicas" "$(echo "$took / $path" | bc -l)"
done
stop
