#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests that need one (tests/test_sweep_workers.py, shared sweep storage).
#
# Sourced (what .ci/run does): `start_test_postgres` starts a server in a temp folder on a free localhost port,
#   creates a database, exports POCKETBERT_TEST_POSTGRES_URL=postgresql://postgres:PASSWORD@127.0.0.1:PORT/pocketbert_test
#   and stops the server and deletes the folder when the shell exits. Without PostgreSQL it installs the Debian
#   packages (as root, when apt works), or else says so in one line and returns 0: the tests then skip with a reason.
# Run (for a developer): .ci/postgres.sh COMMAND...  runs COMMAND with the server up, e.g.
#   .ci/postgres.sh .venv/bin/pytest tests/test_sweep_workers.py

_pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return 0; fi
    command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

_pg_install() {
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
    echo "postgres: installing the Debian PostgreSQL packages (apt-get install postgresql)"
    { apt-get install -y -q --no-install-recommends postgresql \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; }; } >/dev/null 2>&1
}

stop_test_postgres() {
    if [[ -n "${_PG_DIR:-}" && -d "$_PG_DIR" ]]; then
        $_PG_AS "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" stop -m fast -w >/dev/null 2>&1 || true
        rm -rf "$_PG_DIR"
    fi
    _PG_DIR=""
}

start_test_postgres() {
    _PG_BIN=$(_pg_bin) || true
    if [[ -z "$_PG_BIN" ]] && _pg_install; then _PG_BIN=$(_pg_bin) || true; fi
    if [[ -z "$_PG_BIN" ]]; then
        echo "postgres: PostgreSQL is not installed (and apt-get could not install it): its tests will skip"
        return 0
    fi
    _PG_AS=""
    # initdb and postgres refuse to run as root: run them as the packages' `postgres` user
    if [[ "$(id -u)" == 0 ]]; then _PG_AS="runuser -u postgres --"; fi
    _PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pocketbert-postgres.XXXXXX")
    trap stop_test_postgres EXIT
    local port password
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    echo "$password" >"$_PG_DIR/pwfile"
    [[ -z "$_PG_AS" ]] || chown -R postgres "$_PG_DIR"
    if ! $_PG_AS "$_PG_BIN/initdb" -D "$_PG_DIR/data" -U postgres --pwfile="$_PG_DIR/pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$_PG_DIR/initdb.log" 2>&1 \
        || ! $_PG_AS "$_PG_BIN/pg_ctl" -D "$_PG_DIR/data" -l "$_PG_DIR/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $_PG_DIR -c fsync=off" >/dev/null 2>&1 \
        || ! $_PG_AS "$_PG_BIN/createdb" -h "$_PG_DIR" -p "$port" -U postgres pocketbert_test; then
        echo "postgres: could not start a server with $_PG_BIN (logs below): its tests will skip"
        tail -n 20 "$_PG_DIR"/*.log 2>/dev/null || true
        stop_test_postgres
        return 0
    fi
    export POCKETBERT_TEST_POSTGRES_URL="postgresql://postgres:$password@127.0.0.1:$port/pocketbert_test"
    echo "postgres: throwaway server $("$_PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" \
         "(POCKETBERT_TEST_POSTGRES_URL), stopped at exit"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    [[ $# -gt 0 ]] || { echo "usage: .ci/postgres.sh COMMAND... (runs COMMAND with a throwaway PostgreSQL)" >&2; exit 2; }
    start_test_postgres
    "$@"
fi
