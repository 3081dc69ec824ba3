#!/usr/bin/env bash
# Checks package.sh as the agents will use its output: a tarball per version with a matching
# .sha256, one top directory, every program reporting the tarball's version, and a second run
# that reuses what the first made.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./package.sh "$out" 22.10.1 22.10.2 >/dev/null
for v in 22.10.1 22.10.2; do
  t="rondb-$v-linux-glibc2.28-x86_64.tar.gz"
  (cd "$out" && sha256sum --check --quiet "$t.sha256")
  mkdir -p "$out/x-$v" && tar xzf "$out/$t" -C "$out/x-$v"
  top=$(ls "$out/x-$v")
  [ "$top" = "rondb-$v-linux-glibc2.28-x86_64" ] || { echo "unexpected top directory $top" >&2; exit 1; }
  for p in ndb_mgmd ndbmtd mysqld ndb_mgm ndb_restore ndb_waiter; do
    "$out/x-$v/$top/bin/$p" --version | grep -q "RonDB-$v" || { echo "$p does not report $v" >&2; exit 1; }
  done
done
before=$(sha256sum "$out"/*.tar.gz)
second=$(./package.sh "$out" 22.10.1 22.10.2 2>&1)
grep -q "up to date" <<<"$second" || { echo "second run rebuilt the tarballs: $second" >&2; exit 1; }
[ "$before" = "$(sha256sum "$out"/*.tar.gz)" ] || { echo "tarballs changed on a second run" >&2; exit 1; }
echo "package.sh: 2 versions packed, checksums verified, programs report their version, second run cached"
