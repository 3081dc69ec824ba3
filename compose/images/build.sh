#!/usr/bin/env bash
# Builds the images of the Docker tier on this machine, with no registry. Idempotent and
# cached by tag (a tag carries the hash of the ndb-agent binary it contains):
#   managed-rondb/base:bookworm-1      Debian from debootstrap + docker import (build-base.sh)
#   managed-rondb/ndb-agent:latest     the ndb-agent built here, run by supervisord
#   managed-rondb/artifacts:latest     nginx serving ndb-agent tarballs 0.999 and 1.0 and the
#                                      RonDB stand-in as RonDB 22.10.1 and 22.10.2 (+ .sha256)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
"$ROOT/compose/images/build-base.sh"
BASE=${BASE_IMAGE:-managed-rondb/base:bookworm-1}
# NDB_AGENT_BIN: an ndb-agent already built (the test suite passes its own).
if [ -n "${NDB_AGENT_BIN:-}" ]; then
  BIN=$NDB_AGENT_BIN
else
  "$ROOT/scripts/build-release.sh"
  BIN="$ROOT/target/release/ndb-agent"
fi
SHA=$(sha256sum "$BIN" | cut -c1-12)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# The image also carries its supervisord configuration: a change of it is a new tag too.
CONF_SHA=$(cat "$ROOT/compose/images/agent/supervisord.conf" "$ROOT/compose/images/agent/ndb-agent-start" | sha256sum | cut -c1-8)
AGENT_TAG=managed-rondb/ndb-agent:build-$SHA-$CONF_SHA
if docker image inspect "$AGENT_TAG" >/dev/null 2>&1; then
  echo "agent image $AGENT_TAG: cached"
else
  CTX=$(mktemp -d); trap 'rm -rf "$CTX"' EXIT
  cp "$BIN" "$CTX/ndb-agent"
  cp "$ROOT/compose/images/agent/supervisord.conf" "$ROOT/compose/images/agent/ndb-agent-start" "$CTX/"
  cat >"$CTX/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY ndb-agent /usr/local/bin/ndb-agent
COPY ndb-agent-start /usr/local/bin/ndb-agent-start
COPY supervisord.conf /etc/supervisor/supervisord.conf
RUN chmod 755 /usr/local/bin/ndb-agent /usr/local/bin/ndb-agent-start && mkdir -p /var/lib/ndb-agent /etc/supervisor/conf.d
LABEL managed-rondb.image=ndb-agent managed-rondb.version=$VERSION managed-rondb.build=$SHA
EXPOSE 7100 8181
CMD ["/usr/bin/supervisord", "-n", "-c", "/etc/supervisor/supervisord.conf"]
DOCKERFILE
  docker build -q -t "$AGENT_TAG" "$CTX" >/dev/null
  rm -rf "$CTX"; trap - EXIT
  echo "agent image $AGENT_TAG: built"
fi
docker tag "$AGENT_TAG" managed-rondb/ndb-agent:latest

# The RonDB stand-in as RonDB's release tarballs (cached by package.sh): the artifact server
# serves them where the desired state's RonDBDownloadLink points.
RONDB_VERSIONS="22.10.1 22.10.2"
TARBALLS="$ROOT/target/rondb-tarballs"
"$ROOT/tests/rondb-standin/package.sh" "$TARBALLS" $RONDB_VERSIONS >/dev/null
RONDB_SHA=$(cat "$TARBALLS"/*.sha256 | sha256sum | cut -c1-12)

ART_TAG=managed-rondb/artifacts:build-$SHA-rondb-$RONDB_SHA
if docker image inspect "$ART_TAG" >/dev/null 2>&1; then
  echo "artifact image $ART_TAG: cached"
else
  CTX=$(mktemp -d); trap 'rm -rf "$CTX"' EXIT
  mkdir -p "$CTX/srv/ndb-agent" "$CTX/srv/rondb"
  for v in 0.999 1.0; do
    d="$CTX/pkg/ndb-agent-$v"
    mkdir -p "$d/bin"
    cp "$BIN" "$d/bin/ndb-agent"
    echo "$v" >"$d/VERSION"
    tar -C "$CTX/pkg" -czf "$CTX/srv/ndb-agent/ndb-agent-$v.tar.gz" "ndb-agent-$v"
    (cd "$CTX/srv/ndb-agent" && sha256sum "ndb-agent-$v.tar.gz" >"ndb-agent-$v.tar.gz.sha256")
  done
  for v in $RONDB_VERSIONS; do
    cp "$TARBALLS/rondb-$v-linux-glibc2.28-x86_64.tar.gz" "$TARBALLS/rondb-$v-linux-glibc2.28-x86_64.tar.gz.sha256" "$CTX/srv/rondb/"
  done
  cp "$ROOT/compose/images/artifacts/nginx.conf" "$CTX/nginx.conf"
  cat >"$CTX/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY srv /srv/artifacts
COPY nginx.conf /etc/nginx/nginx.conf
LABEL managed-rondb.image=artifacts managed-rondb.version=$VERSION managed-rondb.build=$SHA managed-rondb.agent-versions="0.999 1.0" managed-rondb.rondb-versions="$RONDB_VERSIONS"
EXPOSE 8080
CMD ["/usr/sbin/nginx", "-g", "daemon off;"]
DOCKERFILE
  docker build -q -t "$ART_TAG" "$CTX" >/dev/null
  rm -rf "$CTX"; trap - EXIT
  echo "artifact image $ART_TAG: built"
fi
docker tag "$ART_TAG" managed-rondb/artifacts:latest
