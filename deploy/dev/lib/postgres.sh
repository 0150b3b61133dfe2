# ensure_postgres: a PostgreSQL server on 127.0.0.1:5432 that the tests reach as user postgres.
# shellcheck shell=bash
PG_TEST_URL="${REMOTEGPU_TEST_PG_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}"

pg_reachable() {
    "$VENV/bin/python" - "$PG_TEST_URL" <<'PY' 2>/dev/null
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=3).close()
PY
}

ensure_postgres() {
    pg_reachable && return 0
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
    for _ in $(seq 30); do pg_reachable && return 0; sleep 0.5; done
    # Installed but refusing us: the test database server must trust local TCP connections.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q "remotegpu-dev" "$hba"; then
        say "allowing trust auth for 127.0.0.1 in $hba (development/CI machine only)"
        as_root sed -i '1i host all all 127.0.0.1/32 trust  # remotegpu-dev' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
    for _ in $(seq 30); do pg_reachable && return 0; sleep 0.5; done
    die "PostgreSQL is not reachable at $PG_TEST_URL"
}
