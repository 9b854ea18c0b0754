#!/usr/bin/env bash
# Run once by the postgres image when it initialises an empty data
# directory (/docker-entrypoint-initdb.d): lets streaming replicas connect.
# With REPLICATION_PASSWORD empty it does nothing; on a primary initialised
# earlier, run the same two steps by hand (README, "Read replicas").
# Written to work whether the entrypoint runs it or sources it (no exit,
# no shell options changed). psql substitutes :'password' (quoted as a
# literal) only in what it reads, hence the here-document.
if [ -n "${REPLICATION_PASSWORD:-}" ]; then
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$REPLICATION_PASSWORD" <<'SQL' &&
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL
    echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
else
  echo "REPLICATION_PASSWORD is empty: no replication role made" >&2
fi
