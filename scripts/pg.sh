# Helpers to run a private PostgreSQL cluster from the system's binaries.
# Sourced by scripts/test.sh and scripts/run.sh; not meant to be run alone.

# Installs PostgreSQL with apt when initdb/pg_ctl are missing.
pg_ensure_installed() {
  if pg_find_bindir >/dev/null; then return 0; fi
  echo "PostgreSQL server binaries not found: installing with apt" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  pg_find_bindir >/dev/null || { echo "PostgreSQL installation failed" >&2; return 1; }
}

# Prints the directory that holds initdb and pg_ctl.
pg_find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -Vr); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

# Runs a command as the postgres user when we are root (initdb refuses root).
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DATADIR PORT [extra postgres -c options...]: initialises DATADIR if
# needed and starts the server on 127.0.0.1:PORT with its socket in DATADIR.
pg_start() {
  local datadir="$1" port="$2"; shift 2
  local bindir; bindir="$(pg_find_bindir)"
  mkdir -p "$datadir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$datadir"; fi
  if [ ! -f "$datadir/PG_VERSION" ]; then
    pg_as_owner "$bindir/initdb" -A trust -U postgres -D "$datadir" >/dev/null
  fi
  local options="-p $port -k $datadir -c listen_addresses=127.0.0.1 $*"
  pg_as_owner "$bindir/pg_ctl" -D "$datadir" -o "$options" -l "$datadir/server.log" -w -t 60 start >/dev/null
}

# pg_start_standby PRIMARY_PORT DATADIR PORT [extra postgres -c options...]:
# a streaming standby of the server on 127.0.0.1:PRIMARY_PORT: a base backup
# with `pg_basebackup -R` (connection settings and standby.signal written),
# started as a hot standby on 127.0.0.1:PORT. Give it the primary's
# max_connections at least (a hot standby refuses fewer).
pg_start_standby() {
  local primary_port="$1" datadir="$2" port="$3"; shift 3
  local bindir; bindir="$(pg_find_bindir)"
  mkdir -p "$datadir"
  chmod 700 "$datadir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$datadir"; fi
  pg_as_owner "$bindir/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
    -D "$datadir" -R -X stream -c fast
  local options="-p $port -k $datadir -c listen_addresses=127.0.0.1 $*"
  pg_as_owner "$bindir/pg_ctl" -D "$datadir" -o "$options" -l "$datadir/server.log" -w -t 60 start >/dev/null
}

pg_stop() {
  local datadir="$1"
  local bindir; bindir="$(pg_find_bindir)"
  pg_as_owner "$bindir/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
}

# Prints a TCP port that is free now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
