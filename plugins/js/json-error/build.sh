#!/usr/bin/env bash
# Builds handler.js into a component for world `response-handler`.
# Usage: build.sh [OUTPUT]  (default: plugins/target/polyglot/json-error-js.wasm)
# Exit 3: componentize-js or Node.js is not installed (tests skip); any other non-zero: build failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/plugins/target/polyglot/json-error-js.wasm}"
tool="$here/node_modules/.bin/componentize-js"

if [[ ! -x "$tool" ]] || ! command -v node >/dev/null; then
    cat >&2 <<MSG
################################################################################
# componentize-js (or Node.js) is missing: cannot build the JavaScript json-error plugin.
# Install it with:
#     npm ci --prefix plugins/js/json-error
################################################################################
MSG
    exit 3
fi

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
# componentize-js takes the source path relative to the working directory
# (it cuts the cwd's length off an absolute one), so run from here.
cd "$here"
# The handler needs no WASI at all: with every feature disabled the component
# imports only wharf:plugin (in particular no wasi:http, which the host lacks).
"$tool" handler.js --wit "$repo/wit" --world-name response-handler \
    --disable stdio random clocks http fetch-event --out "$out"
