#!/usr/bin/env bash
# Checks formatting and lints (`cargo fmt --check`, `cargo clippy -D
# warnings`), then runs every test of the workspace against real
# components: a private PostgreSQL cluster started here on a free port
# (installed with apt when missing) and a streaming standby of it,
# librdkafka's mock Kafka cluster inside the tests, and Debian's chromium
# for the dashboard page (installed when missing). Extra arguments go to the test runner (e.g. a test name filter),
# and skip the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
source scripts/apt.sh

pg_ensure_installed
build_deps_ensure
if [ "$#" -eq 0 ]; then
  cargo fmt --all --check
  (cd fuzz && cargo fmt --check)
  cargo clippy --workspace --all-targets -- -D warnings
fi
# The dashboard page is tested in headless Chromium.
apt_ensure chromium
# A test reads PostgreSQL's messages in German: errors are recognised by
# SQLSTATE and structure, never by their (translated) text.
locale_ensure de_DE.UTF-8
# Tests run on a database whose collation is not C (issue: one byte order everywhere).
locale_ensure en_US.UTF-8
workdir="$(mktemp -d /tmp/energy-test.XXXXXX)"
chmod 755 "$workdir"
port="$(free_port)"
# Durability settings off: test data is thrown away, and the suite runs faster.
# A small max_wal_size keeps the write-ahead log, which the standby holds
# too, from taking gigabytes of a fresh machine's disk after the cold build.
pg_settings=(-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400
  -c max_wal_size=256MB)
pg_start "$workdir/pgdata" "$port" "${pg_settings[@]}"
cleanup() { pg_stop "$workdir/standby"; pg_stop "$workdir/pgdata"; rm -rf "$workdir"; }
trap cleanup EXIT
# A streaming standby of it, for the tests of reads on replicas.
standby_port="$(free_port)"
pg_start_standby "$port" "$workdir/standby" "$standby_port" "${pg_settings[@]}"

export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
export TEST_STANDBY_DATABASE_URL="postgres://postgres@127.0.0.1:$standby_port/postgres"
export TEST_PG_BINDIR="$(pg_find_bindir)"
echo "test PostgreSQL on 127.0.0.1:$port, its standby on 127.0.0.1:$standby_port"
# A full disk fails tests far from its cause: say how much there is.
echo "free disk for the test servers: $(df -h --output=avail "$workdir" | tail -1)"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
