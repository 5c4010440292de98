#!/usr/bin/env bash
# The test run behind `make test`: PostgreSQL and Redis up (started if they are not), an S3 endpoint over
# HTTP (moto's server) for the run, the Kandinsky service's own tests, then pytest. Extra arguments go to
# pytest (and leave the service's tests out).
#
# Point the run at other services by setting TEST_DATABASE_URL, TEST_REDIS_URL or TEST_S3_ENDPOINT_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
mkdir -p var

. scripts/services.sh

[ -n "${TEST_DATABASE_URL:-}" ] || ensure_postgres
[ -n "${TEST_REDIS_URL:-}" ] || ensure_redis

s3_endpoint="${TEST_S3_ENDPOINT_URL:-}"
if [ -z "$s3_endpoint" ]; then
    start_moto
    s3_endpoint="$S3_ENDPOINT"
fi

export DEBUG=false
export SECRET_KEY=test-only-not-secret
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/genbox}"
export CELERY_BROKER_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export AWS_STORAGE_BUCKET_NAME=genbox-test
export AWS_S3_ENDPOINT_URL="$s3_endpoint"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_S3_REGION_NAME=us-east-1
export PYTHONPATH="$PWD/backend:$PWD"

# The Kandinsky service (services/kandinsky/) has its own environment (torch, diffusers) and tests. A full
# run starts with them, which also prepares the environment the adapter's test against the real service
# uses (tests/e2e/test_kandinsky_service.py); a run of chosen tests (arguments given) leaves them out.
if [ $# -eq 0 ]; then
    echo "Kandinsky service tests (services/kandinsky/scripts/test.sh)"
    bash services/kandinsky/scripts/test.sh
fi

echo "Testing against $DATABASE_URL, $CELERY_BROKER_URL, S3 at $AWS_S3_ENDPOINT_URL"
"$bin/python" -m pytest "$@"
