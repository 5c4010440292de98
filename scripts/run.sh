#!/usr/bin/env bash
# Start a Celery worker (with beat) in the background and the API in the foreground; stop both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-8000}"
bin=.venv/bin
export PYTHONPATH="$PWD/backend"
# Where providers fetch source images from and send callbacks to (local providers on this machine).
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://127.0.0.1:$port}"
mkdir -p var

# -B runs the beat scheduler (the pipeline's sweeper) inside the worker: fine for one local worker.
"$bin/celery" -A config worker -B --loglevel=INFO --concurrency=2 >var/worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM

cat <<MSG

  Genbox API     http://127.0.0.1:$port/api/
  API docs       http://127.0.0.1:$port/api/docs/
  Admin          http://127.0.0.1:$port/admin/   (create a user: .venv/bin/python manage.py createsuperuser)
  Worker log     var/worker.log

MSG
"$bin/python" manage.py runserver "127.0.0.1:$port"
