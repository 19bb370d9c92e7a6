#!/usr/bin/env bash
# Benchmark guardian against the shell baseline and the hardware lower bound (see bench.py).
# Installs what it needs on a fresh Debian machine, builds the release binary, runs bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in sqlite3 pigz /usr/bin/time; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq sqlite3 pigz time
fi
cargo build --release --locked
exec python3 scripts/bench.py "$@"
