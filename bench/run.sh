#!/usr/bin/env bash
# Pipeline benchmarks against the Kie.ai emulator on the real stack: PostgreSQL, Redis, moto's S3 server,
# gunicorn for the API and a default Celery worker (2 processes). Results: docs/benchmarks.md.
#
#   bash bench/run.sh inflight --count 1000 --seconds 60 [--no-callbacks]
#   bash bench/run.sh large --size 1000000000
#   bash bench/run.sh throughput --count 1000
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet install
mkdir -p var
. scripts/services.sh
ensure_postgres
ensure_redis
start_moto

export DEBUG=false SECRET_KEY=bench-only-not-secret LOG_LEVEL=WARNING
export DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/genbox_bench}"
export CELERY_BROKER_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}"
export AWS_STORAGE_BUCKET_NAME=genbox-bench AWS_S3_ENDPOINT_URL="$S3_ENDPOINT"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_S3_REGION_NAME=us-east-1
export PYTHONPATH="$PWD/backend:$PWD"
.venv/bin/python bench/pipeline_bench.py "$@"  # not exec: the EXIT trap must stop the moto server
