#!/usr/bin/env bash
# Builds app.py into a component for world `response-handler`.
# Usage: build.sh [OUTPUT]  (default: plugins/target/polyglot/json-error-py.wasm)
# Exit 3: componentize-py is not installed (tests skip); any other non-zero: build failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/plugins/target/polyglot/json-error-py.wasm}"

# The pinned tool from this folder's .venv (the tests make it with
# `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`), else one on PATH.
tool=componentize-py
if [[ -x "$here/.venv/bin/componentize-py" ]]; then
    tool="$here/.venv/bin/componentize-py"
fi
# --version rather than `command -v`: a pyenv shim exists even where the tool is not installed.
if ! "$tool" --version >/dev/null 2>&1; then
    cat >&2 <<MSG
################################################################################
# componentize-py is not installed: cannot build the Python json-error plugin.
# Install it with:
#     python3 -m venv plugins/python/json-error/.venv
#     plugins/python/json-error/.venv/bin/pip install -r plugins/python/json-error/requirements.txt
################################################################################
MSG
    exit 3
fi

# An empty venv: otherwise componentize-py puts the builder's own site-packages
# on the guest's sys.path, so the output would depend on the machine.
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
mkdir -p "$venv/lib/python3/site-packages" "$(dirname "$out")"
VIRTUAL_ENV="$venv" "$tool" --quiet -d "$repo/wit" -w response-handler \
    componentize --python-path "$here" --output "$out" app
