#!/usr/bin/env bash
# Reproduces every table in BENCHMARKS.md: builds the release binaries,
# starts a private PostgreSQL cluster with the settings below on a free port
# (installed with apt when missing), and runs the harness (bench/), which
# starts its own broker and services. Extra arguments go to the harness,
# e.g. `scripts/bench.sh --scenario drain --runs 5`; see `--help`.
# The report is printed and written to bench-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
source scripts/apt.sh

pg_ensure_installed
build_deps_ensure
cargo build --release --workspace --bins

workdir="$(mktemp -d /tmp/energy-bench.XXXXXX)"
chmod 755 "$workdir"
port="$(free_port)"
# Durability as in production (fsync, synchronous commit, full-page writes
# on); memory and WAL sized for a machine with 24 GiB, so checkpoints do not
# dominate a multi-million-row load.
pg_start "$workdir/pgdata" "$port" \
  -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
  -c shared_buffers=2GB -c max_wal_size=8GB -c checkpoint_timeout=15min \
  -c max_connections=200
cleanup() { pg_stop "$workdir/pgdata"; rm -rf "$workdir"; }
trap cleanup EXIT

export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
export TEST_PG_BINDIR="$(pg_find_bindir)"
./target/release/bench --output bench-results.md "$@"
