#!/usr/bin/env bash
# The test run behind `make test`: PostgreSQL and Redis up (started if they are not), an S3 endpoint over
# HTTP (moto's server) for the run, then pytest. Extra arguments go to pytest.
#
# Point the run at other services by setting TEST_DATABASE_URL, TEST_REDIS_URL or TEST_S3_ENDPOINT_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
mkdir -p var

fail() { echo "make test: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # host port seconds
    for _ in $(seq 1 $(($3 * 4))); do port_open "$1" "$2" && return 0; sleep 0.25; done
    return 1
}

ensure_postgres() {
    port_open 127.0.0.1 5432 && return 0
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
    wait_port 127.0.0.1 5432 20 || fail "PostgreSQL is not running on 127.0.0.1:5432 and could not be started.
  Start it (pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start) or set TEST_DATABASE_URL."
}

ensure_redis() {
    port_open 127.0.0.1 6379 && return 0
    echo "Redis is not answering on 127.0.0.1:6379; starting it"
    if command -v redis-server >/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
    fi
    wait_port 127.0.0.1 6379 10 || fail "Redis is not running on 127.0.0.1:6379 and could not be started.
  Start it (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no) or set TEST_REDIS_URL."
}

[ -n "${TEST_DATABASE_URL:-}" ] || ensure_postgres
[ -n "${TEST_REDIS_URL:-}" ] || ensure_redis

s3_endpoint="${TEST_S3_ENDPOINT_URL:-}"
if [ -z "$s3_endpoint" ]; then
    s3_port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$bin/moto_server" -H 127.0.0.1 -p "$s3_port" >var/moto.log 2>&1 &
    moto_pid=$!
    trap 'kill $moto_pid 2>/dev/null || true' EXIT
    wait_port 127.0.0.1 "$s3_port" 30 || fail "the S3 test server (moto) did not start; see var/moto.log"
    s3_endpoint="http://127.0.0.1:$s3_port"
fi

export DEBUG=false
export SECRET_KEY=test-only-not-secret
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/genbox}"
export CELERY_BROKER_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export AWS_STORAGE_BUCKET_NAME=genbox-test
export AWS_S3_ENDPOINT_URL="$s3_endpoint"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_S3_REGION_NAME=us-east-1
export PYTHONPATH="$PWD/backend:$PWD"

echo "Testing against $DATABASE_URL, $CELERY_BROKER_URL, S3 at $AWS_S3_ENDPOINT_URL"
"$bin/python" -m pytest "$@"
