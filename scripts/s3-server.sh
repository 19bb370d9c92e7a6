#!/usr/bin/env bash
# Start (or stop) an independently written S3 server on 127.0.0.1 for the tests: moto, with SigV4
# and IAM policies enforced, a bucket, and an access key limited by guardian's documented
# least-privilege policy (docs/S3.md). `start` prints the GUARDIAN_TEST_S3_* variables that make
# the storage contract suite and the end-to-end scenario run against it as well:
#
#   scripts/s3-server.sh start              # first run installs moto (~40 s), then ~2 s
#   source target/s3-server/env             # the same lines `start` prints
#   cargo test --locked                      # the external_s3_* tests now use the server
#   scripts/s3-server.sh stop
#
# (`eval "$(scripts/s3-server.sh start)"` also works interactively, but under `set -e` a failed
# start would go unnoticed inside the command substitution; the two steps above cannot.)
#
# moto is installed with pip into a venv under ${XDG_CACHE_HOME:-~/.cache}/guardian/ (kept
# across clones on the same machine). Server state and log: target/s3-server/.
set -euo pipefail

MOTO_VERSION=5.2.5
here="$(cd "$(dirname "$0")/.." && pwd)"
state="${GUARDIAN_S3_SERVER_DIR:-$here/target/s3-server}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/guardian/moto-$MOTO_VERSION"
bucket=guardian-test
region=us-east-1

log() { echo "s3-server: $*" >&2; }

stop() {
    if [[ -f "$state/pid" ]]; then
        local pid
        pid=$(cat "$state/pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            log "stopped moto (pid $pid)"
        fi
        rm -f "$state/pid"
    fi
}

install() {
    if [[ -x "$venv/bin/moto_server" ]]; then
        return
    fi
    log "installing moto[server]==$MOTO_VERSION into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
}

start() {
    command -v python3 >/dev/null || { log "python3 is required"; exit 1; }
    install
    stop
    mkdir -p "$state"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The first 6 requests (the set-up below) run without auth; every later one must be signed
    # with a known key and is checked against that key's IAM policy.
    INITIAL_NO_AUTH_ACTION_COUNT=6 MOTO_PORT="$port" \
        nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$state/moto.log" 2>&1 &
    echo $! >"$state/pid"
    for _ in $(seq 1 100); do
        # A bare TCP connect: an HTTP request would use up one of the unauthenticated actions.
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    local endpoint="http://127.0.0.1:$port"
    trap 'stop; log "set-up failed; see $state/moto.log"' ERR
    "$venv/bin/python" - "$endpoint" "$bucket" "$region" "$here/docs/S3.md" >"$state/env" <<'PY'
import json, re, sys
import boto3, botocore

endpoint, bucket, region, doc = sys.argv[1:]
anon = dict(endpoint_url=endpoint, region_name=region,
            aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **anon)
s3 = boto3.client("s3", **anon)
# The least-privilege policy from docs/S3.md, for this bucket and the prefixes tests use (t-*).
text = open(doc).read()
policy = re.search(r"<!-- policy -->\s*```json\n(.*?)```", text, re.S).group(1)
# The bucket name ends in "*" so that the policy also covers the versioned bucket below.
policy = policy.replace("market-backups", bucket + "*").replace("prod/*", "t-*")
json.loads(policy)
iam.create_user(UserName="guardian")                                       # 1
key = iam.create_access_key(UserName="guardian")["AccessKey"]               # 2
iam.put_user_policy(UserName="guardian", PolicyName="guardian",
                    PolicyDocument=policy)                                  # 3
s3.create_bucket(Bucket=bucket)                                             # 4
# A second bucket with versioning on, where deletes leave noncurrent versions (doctor warns).
versioned = bucket + "-versioned"
s3.create_bucket(Bucket=versioned)                                          # 5
s3.put_bucket_versioning(Bucket=versioned,
                         VersioningConfiguration={"Status": "Enabled"})      # 6
# Auth must now be enforced: a wrong secret is refused, the real key works.
bad = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id=key["AccessKeyId"], aws_secret_access_key="wrong")
try:
    bad.list_objects_v2(Bucket=bucket)
    sys.exit("s3-server: moto accepted a wrong secret: auth is not enforced")
except botocore.exceptions.ClientError:
    pass
good = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                    aws_access_key_id=key["AccessKeyId"],
                    aws_secret_access_key=key["SecretAccessKey"])
good.list_objects_v2(Bucket=bucket, Prefix="t-probe/")
# The policy is enforced: no writing outside the prefix. (moto does not evaluate the s3:prefix
# condition on ListBucket, so listing elsewhere is not refused here; AWS does refuse it.)
try:
    good.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x")
    sys.exit("s3-server: moto allowed a write outside the policy's prefix")
except botocore.exceptions.ClientError:
    pass
print(f"export GUARDIAN_TEST_S3_NAME=moto")
print(f"export GUARDIAN_TEST_S3_ENDPOINT={endpoint}")
print(f"export GUARDIAN_TEST_S3_BUCKET={bucket}")
print(f"export GUARDIAN_TEST_S3_VERSIONED_BUCKET={versioned}")
print(f"export GUARDIAN_TEST_S3_REGION={region}")
print(f"export GUARDIAN_TEST_S3_ACCESS_KEY={key['AccessKeyId']}")
print(f"export GUARDIAN_TEST_S3_SECRET_KEY={key['SecretAccessKey']}")
print(f"export GUARDIAN_TEST_S3_IF_NONE_MATCH=honoured")
print(f"export GUARDIAN_TEST_S3_LISTS_UPLOADS=yes")
PY
    trap - ERR
    log "moto $MOTO_VERSION on $endpoint (pid $(cat "$state/pid"), log $state/moto.log), bucket $bucket, auth enforced"
    cat "$state/env"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
