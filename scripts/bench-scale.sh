#!/usr/bin/env bash
# Recovery time at scale: backup, restore --latest (every check), drill, and restore --latest
# of the drill-verified snapshot (quick_check), of one database, on the local store and (with an
# S3 server) on S3, each with its wall time and peak RSS (/usr/bin/time). Every restore proves
# the restored bytes against the manifest's SHA-256 itself, so nothing else is compared here.
#
#   scripts/gen-db.sh /var/tmp/g10/big.sqlite 10240       # ~13 min; ~35 GB free needed in all
#   scripts/garage-server.sh start && source target/garage-server/env   # optional: S3 rows
#   scripts/bench-scale.sh /var/tmp/g10/big.sqlite [RUNS]
#
# Prints one line per step: `step  seconds  peak-RSS-MiB`, and writes them to
# results.tsv beside the database. Defaults: RUNS=1, the release build (GUARDIAN_BENCH_BIN to
# measure another). moto (scripts/s3-server.sh) reads a whole object into memory for every
# ranged GET, so use Garage for databases over a few hundred MiB.
set -euo pipefail

db=${1:?usage: bench-scale.sh DB [RUNS]}
runs=${2:-1}
here="$(cd "$(dirname "$0")/.." && pwd)"
bin=${GUARDIAN_BENCH_BIN:-$here/target/release/guardian}
[[ -x "$bin" ]] || (cd "$here" && cargo build --release --locked)
work="$(dirname "$db")/scale-work"
rm -rf "$work"
mkdir -p "$work"
out="$(dirname "$db")/results.tsv"
: >"$out"

config() { # config NAME STORAGE-TABLE
    cat >"$work/$1.toml" <<EOF
$2

[backup]
staging_dir = "$work/staging-$1"

[[databases]]
name = "big"
path = "$db"
EOF
}
config local "[storage]
path = \"$work/store\""
kinds=(local)
if [[ -n "${GUARDIAN_TEST_S3_ENDPOINT:-}" ]]; then
    export AWS_ACCESS_KEY_ID=$GUARDIAN_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$GUARDIAN_TEST_S3_SECRET_KEY
    config s3 "[storage]
kind = \"s3\"
bucket = \"${GUARDIAN_TEST_S3_BUCKET:-guardian-test}\"
prefix = \"t-scale-$$\"
endpoint = \"$GUARDIAN_TEST_S3_ENDPOINT\"
region = \"${GUARDIAN_TEST_S3_REGION:-us-east-1}\"
force_path_style = true"
    kinds+=(s3)
fi

step() { # step NAME COMMAND...
    local name=$1 t
    shift
    t=$(mktemp)
    if ! /usr/bin/time -f '%e %M' -o "$t" "$@" >"$work/$name.log" 2>&1; then
        echo "$name failed:" >&2
        cat "$work/$name.log" >&2
        exit 1
    fi
    read -r secs kib <"$t"
    rm -f "$t"
    printf '%s\t%s\t%.1f\t%s\n' "$name" "$secs" "$(bc -l <<<"$kib / 1024")" "$(cut -d' ' -f1-3 /proc/loadavg)" |
        tee -a "$out"
}

echo "# $(basename "$db"): $(stat -c %s "$db") bytes; $("$bin" --version); $(nproc) cores" | tee -a "$out"
echo "# step	seconds	peak RSS MiB	load average" | tee -a "$out"
for kind in "${kinds[@]}"; do
    cfg="$work/$kind.toml"
    for run in $(seq 1 "$runs"); do
        step "$kind backup #$run" "$bin" -q --config "$cfg" backup
        id=$(tail -n 1 "$work/$kind backup #$run.log")
        rm -f "$work/restored.db"
        step "$kind restore --latest #$run" "$bin" -q --config "$cfg" restore --latest --to "$work/restored.db"
        rm -f "$work/restored.db"
        # A drill proves the snapshot; the next restore of it runs quick_check only.
        step "$kind drill #$run" "$bin" -q --config "$cfg" drill --snapshot "$id"
        step "$kind restore --latest, drill-verified #$run" "$bin" -q --config "$cfg" restore --latest --to "$work/restored.db"
        rm -f "$work/restored.db"
    done
    "$bin" -q --config "$cfg" status --json >"$work/$kind-status.json" || true
done
echo "# results in $out; logs and status in $work"
