# Throwaway PostgreSQL cluster for scripts/test and scripts/bench (sourced, not run).
#
#   pg_start [extra postgres -c options...]   → starts a cluster in a temp dir on a free port,
#                                               exports PG_URL (postgres://rb@127.0.0.1:PORT/postgres)
#                                               and PG_VERSION, and stops it on EXIT.
#
# initdb refuses to run as root, so as root the cluster runs as the `postgres` system user.
# Durability is off (fsync, synchronous_commit, full_page_writes): the data is thrown away.

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true
}

pg_start() {
  local pgbin
  pgbin=$(pg_bin)
  if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
    echo "PostgreSQL server binaries not found (install postgresql; .ci/run does)" >&2
    return 1
  fi
  PG_TMP=$(mktemp -d /tmp/rb-pg.XXXXXX)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PG_RUN_AS=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    PG_RUN_AS=(runuser -u postgres --)
  fi
  PG_BIN=$pgbin
  trap pg_stop EXIT
  "${PG_RUN_AS[@]}" "$pgbin/initdb" -D "$PG_TMP/data" -U rb --auth=trust -E UTF8 --no-locale >/dev/null || return 1
  local opts="-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
  local extra
  for extra in "$@"; do
    opts="$opts -c $extra"
  done
  "${PG_RUN_AS[@]}" "$pgbin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/pg.log" -w -o "$opts" start >/dev/null || return 1
  PG_URL="postgres://rb@127.0.0.1:$port/postgres"
  PG_VERSION=$("$pgbin/postgres" --version | awk '{print $3}')
  PG_PORT=$port
  export PG_URL PG_VERSION PG_PORT
}

pg_stop() {
  if [ -n "${PG_TMP:-}" ]; then
    "${PG_RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
    PG_TMP=
  fi
}
