#!/usr/bin/env bash
# Screenshot of the status page with headless Chromium (apt-get install -y chromium).
#
#   scripts/screenshot.sh                      # a demo: fixture database, a few backups, a drill,
#                                              # one failure, served by `guardian run` on a free port
#   scripts/screenshot.sh http://127.0.0.1:9187/   # an already running service
#
# Writes docs/status-page.png (1200x900). Needs a built guardian (cargo build) for the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs/status-page.png}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "screenshot.sh: no chromium on PATH (apt-get install -y chromium)" >&2; exit 2; }
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

url=${1:-}
if [ -z "$url" ]; then
  bin=${GUARDIAN:-target/debug/guardian}
  [ -x "$bin" ] || { echo "screenshot.sh: $bin not found; run cargo build first" >&2; exit 2; }
  cp fixtures/market.sqlite "$work/market.db"
  cp fixtures/market.sqlite "$work/orders.db"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/guardian.toml" <<TOML
[storage]
kind = "local"
path = "store"
[backup]
staging_dir = "staging"
[[databases]]
name = "market"
path = "market.db"
backup = "*/20 * * * * *"
drill = "*/30 * * * * *"
[databases.retention]
keep_last = 10
[[databases]]
name = "orders"
path = "orders.db"
backup = "*/20 * * * * *"
[service]
listen = "127.0.0.1:$port"
TOML
  mkdir -p "$work/staging"
  # History: a few snapshots taken by hand, then the service (scheduled backups, a drill).
  for _ in 1 2 3; do "$bin" --config "$work/guardian.toml" -q backup >/dev/null; done
  "$bin" --config "$work/guardian.toml" -q drill --db market >/dev/null
  "$bin" --config "$work/guardian.toml" -q --log-format json run 2>"$work/run.log" &
  pid=$!
  url="http://127.0.0.1:$port/"
  for _ in $(seq 50); do curl -fsS -o /dev/null "$url" 2>/dev/null && break; sleep 0.2; done
  # A failure: the orders database is replaced by something that is not SQLite until the
  # next scheduled backup has failed on it.
  mv "$work/orders.db" "$work/orders.db.real"
  printf 'not a database' > "$work/orders.db"
  for _ in $(seq 120); do curl -fsS "${url}status.json" | grep -q '"job": "backup"' && break; sleep 0.5; done
  mv "$work/orders.db.real" "$work/orders.db"
  sleep 1
fi
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --screenshot="$PWD/$out" --window-size=1200,900 \
  "$url" >/dev/null 2>&1
echo "wrote $out"
