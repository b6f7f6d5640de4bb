#!/usr/bin/env bash
# Runs the guide's scenario: the backend test service on :9095 and Wharf with
# wharf.toml (embedded store, no broker). Extra arguments go to the backend,
# e.g. `run.sh --status 500` for the "backend returns an error" scenario.
# WHARF_CONFIG picks another config, e.g. wharf-rabbitmq.toml (stores on
# RabbitMQ). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p wharf -p test-backend
./target/release/test-backend "$@" &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT
./target/release/wharf run "${WHARF_CONFIG:-examples/reliable-delivery/wharf.toml}"
