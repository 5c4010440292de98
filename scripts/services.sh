# Shared by scripts/test.sh and bench/run.sh (source it): the real services a run needs.
#   ensure_postgres, ensure_redis   check 127.0.0.1:5432 / :6379, start the local server if needed, or fail clearly
#   start_moto                      an S3 server (moto) on a free port for this run; sets S3_ENDPOINT, stops on exit

fail() { echo "${0##*/}: $*" >&2; exit 1; }

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

start_moto() {
    local port
    port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >var/moto.log 2>&1 &
    MOTO_PID=$!
    trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
    wait_port 127.0.0.1 "$port" 30 || fail "the S3 test server (moto) did not start; see var/moto.log"
    S3_ENDPOINT="http://127.0.0.1:$port"
}
