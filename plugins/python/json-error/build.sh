#!/usr/bin/env bash
# Builds app.py into a component for world `response-handler`.
# Usage: build.sh [OUTPUT]  (default: plugins/target/polyglot/json-error-py.wasm)
# Exit 3: componentize-py is not installed (tests skip); any other non-zero: build failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/plugins/target/polyglot/json-error-py.wasm}"

# --version rather than `command -v`: a pyenv shim exists even where the tool is not installed.
if ! componentize-py --version >/dev/null 2>&1; then
    cat >&2 <<MSG
################################################################################
# componentize-py is not installed: cannot build the Python json-error plugin.
# Install it with:
#     pip install -r plugins/python/json-error/requirements.txt
################################################################################
MSG
    exit 3
fi

# An empty venv: otherwise componentize-py puts the builder's own site-packages
# on the guest's sys.path, so the output would depend on the machine.
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
mkdir -p "$venv/lib/python3/site-packages" "$(dirname "$out")"
VIRTUAL_ENV="$venv" componentize-py --quiet -d "$repo/wit" -w response-handler \
    componentize --python-path "$here" --output "$out" app
