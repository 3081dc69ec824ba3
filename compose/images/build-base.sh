#!/usr/bin/env bash
# The Debian base image of the Docker tier, made without a registry: debootstrap into a
# folder, then `docker import`. Includes what the agent and artifact images need
# (supervisor, nginx), so no image build needs the network. Idempotent: cached by tag.
set -euo pipefail
TAG=${BASE_IMAGE:-managed-rondb/base:bookworm-1}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG: cached"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap (Debian package)"
  APT="apt-get"; [ "$(id -u)" = 0 ] || APT="sudo apt-get"
  $APT install -y -q debootstrap >/dev/null 2>&1 || { $APT update -q >/dev/null && $APT install -y -q debootstrap >/dev/null; }
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
ROOT=$(mktemp -d)
trap '$SUDO rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm into $ROOT (a few minutes) ..."
$SUDO debootstrap --variant=minbase \
  --include=supervisor,nginx-light,ca-certificates,procps,iproute2 \
  bookworm "$ROOT/rootfs" "$MIRROR" >"$ROOT/debootstrap.log" 2>&1 || {
    tail -20 "$ROOT/debootstrap.log" >&2; exit 1; }
$SUDO rm -rf "$ROOT"/rootfs/var/cache/apt/archives/*.deb "$ROOT"/rootfs/var/lib/apt/lists/*
$SUDO tar -C "$ROOT/rootfs" -c . | docker import \
  --change 'LABEL managed-rondb.image=base managed-rondb.version=bookworm-1' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "base image $TAG: built"
