#!/usr/bin/env bash
# Runs the delivery benchmark against a build of REV (default: HEAD~1) and
# against this tree, alternating A B A B in one session, so the machine's
# noise hits both alike. Usage: runtime/benches/before-after.sh [REV]
set -euo pipefail
cd "$(dirname "$0")/../.."
rev="${1:-HEAD~1}"
before="$(mktemp -d)"
trap 'git worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$before" "$rev" >/dev/null
# One target dir for both builds: dependencies are compiled once.
CARGO_TARGET_DIR="$PWD/target/before-after" cargo build --release -p wharf --bin wharf --manifest-path "$before/Cargo.toml"
cp target/before-after/release/wharf target/wharf-before
cargo bench -p wharf --bench delivery --no-run
for round in 1 2; do
    echo "== round $round: before ($rev)"
    WHARF_BENCH_BINARY="$PWD/target/wharf-before" cargo bench -p wharf --bench delivery 2>/dev/null | grep -E '^(ingest|forward|peak)'
    echo "== round $round: after (this tree)"
    cargo bench -p wharf --bench delivery 2>/dev/null | grep -E '^(ingest|forward|peak)'
done
