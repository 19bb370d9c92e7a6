#!/usr/bin/env bash
# Start (or stop) a one-node Garage (https://garagehq.deuxfleurs.fr) on 127.0.0.1: a second,
# independently written S3 server beside moto (scripts/s3-server.sh), storing objects on disk,
# for the S3 tests and for benchmarks at sizes moto cannot serve (moto reads a whole object into
# memory for every ranged GET). `garage` must be on PATH; it is not installed by .ci/run (it
# takes 15-25 minutes to build on 2 cores):
#
#   cargo install garage@2.5.0 --locked
#   scripts/garage-server.sh start         # ~3 s; prints the GUARDIAN_TEST_S3_* variables
#   source target/garage-server/env
#   cargo test --locked storage:: s3       # or scripts/bench.py --s3 "$GUARDIAN_TEST_S3_ENDPOINT"
#   scripts/garage-server.sh stop
#
# Data, metadata, config and log: target/garage-server/ (GUARDIAN_GARAGE_DIR to move it, e.g. to
# a disk with room for a 10 GiB benchmark).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
state="${GUARDIAN_GARAGE_DIR:-$here/target/garage-server}"
bucket=guardian-test

log() { echo "garage-server: $*" >&2; }

stop() {
    if [[ -f "$state/pid" ]]; then
        local pid
        pid=$(cat "$state/pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            log "stopped garage (pid $pid)"
        fi
        rm -f "$state/pid"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    command -v garage >/dev/null || {
        log "garage is not on PATH: cargo install garage@2.5.0 --locked"
        exit 1
    }
    stop
    rm -rf "$state"
    mkdir -p "$state/meta" "$state/data"
    local s3_port rpc_port admin_port
    s3_port=$(free_port)
    rpc_port=$(free_port)
    admin_port=$(free_port)
    cat >"$state/garage.toml" <<EOF
metadata_dir = "$state/meta"
data_dir = "$state/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
root_domain = ".s3.garage"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    local g=(garage -c "$state/garage.toml")
    RUST_LOG=garage=warn "${g[@]}" server >"$state/garage.log" 2>&1 &
    echo $! >"$state/pid"
    local node=""
    for _ in $(seq 1 100); do
        node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) && [[ -n "$node" ]] && break
        sleep 0.1
    done
    [[ -n "$node" ]] || {
        log "garage did not start; see $state/garage.log"
        exit 1
    }
    "${g[@]}" layout assign -z dc1 -c 100G "$node" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    local key_id secret
    key_id="GK$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
    secret="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    "${g[@]}" key import --yes -n guardian "$key_id" "$secret" >/dev/null
    "${g[@]}" bucket create "$bucket" >/dev/null
    "${g[@]}" bucket allow --read --write --owner "$bucket" --key guardian >/dev/null
    # The S3 API answers once the layout is live.
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break
        sleep 0.1
    done
    cat >"$state/env" <<EOF
export GUARDIAN_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export GUARDIAN_TEST_S3_BUCKET=$bucket
export GUARDIAN_TEST_S3_REGION=garage
export GUARDIAN_TEST_S3_ACCESS_KEY=$key_id
export GUARDIAN_TEST_S3_SECRET_KEY=$secret
export GUARDIAN_TEST_S3_IF_NONE_MATCH=ignored
export GUARDIAN_TEST_S3_NAME=garage
EOF
    log "garage $(garage --version 2>/dev/null | head -1) on 127.0.0.1:$s3_port (pid $(cat "$state/pid")), bucket $bucket"
    cat "$state/env"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
