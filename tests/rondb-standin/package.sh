#!/usr/bin/env bash
# Packs the RonDB stand-in as RonDB release tarballs, one per version, so code that installs
# RonDB from a tarball (download, check the .sha256, unpack, run bin/<program>) can install
# the stand-in unchanged. Names are those of RonDB's x86_64 release tarballs:
#
#   OUTDIR/rondb-VERSION-linux-glibc2.28-x86_64.tar.gz
#   OUTDIR/rondb-VERSION-linux-glibc2.28-x86_64.tar.gz.sha256
#
# holding rondb-VERSION-linux-glibc2.28-x86_64/ with bin/rondb-standin, bin/<program> (links
# to it) and VERSION (what every program reports).
#
# The same binary packs to the same bytes (sorted names, fixed times and owners, gzip
# without name or time), so a tarball's sha256 only changes when the binary does; a tarball
# already made from this binary is kept (a stamp beside it holds the binary's sha256).
set -euo pipefail

usage() {
    echo "usage: $0 OUTDIR VERSION [VERSION...]   (VERSION like 24.10.1: major.minor.build, minor and build < 256)" >&2
    exit 2
}

[ "$#" -ge 2 ] || usage
outdir=$1
shift
for v in "$@"; do
    if ! [[ "$v" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] ||
        [ "${BASH_REMATCH[2]}" -ge 256 ] || [ "${BASH_REMATCH[3]}" -ge 256 ]; then
        echo "$0: '$v' is not a RonDB version (major.minor.build, minor and build < 256)" >&2
        usage
    fi
done

# Every program the multi-call binary can be (lib.rs PROGRAMS).
programs=(ndb_mgmd ndbmtd ndbd mysqld ndb_mgm ndb_restore ndb_waiter rdrs2)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
# A relative CARGO_TARGET_DIR means relative to where this script was called from.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    CARGO_TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR")
    export CARGO_TARGET_DIR
fi
target=${CARGO_TARGET_DIR:-$root/target}

"$root/scripts/build-release.sh"
binary=$target/release/rondb-standin
[ -x "$binary" ] || { echo "$0: no binary at $binary after the build" >&2; exit 1; }
binary_sha=$(sha256sum "$binary" | cut -d' ' -f1)

umask 022
for v in "$@"; do
    name=rondb-$v-linux-glibc2.28-x86_64
    tarball=$name.tar.gz
    stamp=$outdir/.$name.stamp
    if [ -f "$outdir/$tarball" ] && [ -f "$outdir/$tarball.sha256" ] &&
        [ "$(cat "$stamp" 2>/dev/null || true)" = "$binary_sha" ] &&
        (cd "$outdir" && sha256sum --quiet --check "$tarball.sha256" >/dev/null 2>&1); then
        echo "$outdir/$tarball: up to date"
        continue
    fi
    staging=$(mktemp -d "$outdir/.staging.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    mkdir -p "$staging/$name/bin"
    install -m 0755 "$binary" "$staging/$name/bin/rondb-standin"
    for p in "${programs[@]}"; do
        ln -s rondb-standin "$staging/$name/bin/$p"
    done
    printf '%s\n' "$v" >"$staging/$name/VERSION"
    chmod 0644 "$staging/$name/VERSION"
    chmod 0755 "$staging/$name" "$staging/$name/bin"
    tar --format=gnu --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
        -C "$staging" -cf - "$name" | gzip -n -9 >"$staging/$tarball"
    (cd "$staging" && sha256sum "$tarball" >"$tarball.sha256")
    mv -f "$staging/$tarball" "$outdir/$tarball"
    mv -f "$staging/$tarball.sha256" "$outdir/$tarball.sha256"
    printf '%s\n' "$binary_sha" >"$stamp"
    rm -rf "$staging"
    trap - EXIT
    echo "$outdir/$tarball: $(cut -d' ' -f1 "$outdir/$tarball.sha256")"
done
