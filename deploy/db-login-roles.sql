-- Login roles for the services, members of the group roles the migrations
-- create: energy_worker in energy_writer (ingest-worker), energy_query_api in
-- energy_reader (query-api). Run after `ingest-worker migrate`, as a role
-- with CREATEROLE, giving the two passwords as psql variables:
--
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 \
--     -v worker_password="$WORKER_DB_PASSWORD" \
--     -v query_api_password="$QUERY_API_DB_PASSWORD" \
--     -f deploy/db-login-roles.sql
--
-- Safe to run again: existing roles get the given password and membership.

SELECT format('CREATE ROLE energy_worker LOGIN PASSWORD %L', :'worker_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_worker')
\gexec
ALTER ROLE energy_worker LOGIN PASSWORD :'worker_password';
GRANT energy_writer TO energy_worker;

SELECT format('CREATE ROLE energy_query_api LOGIN PASSWORD %L', :'query_api_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_query_api')
\gexec
ALTER ROLE energy_query_api LOGIN PASSWORD :'query_api_password';
GRANT energy_reader TO energy_query_api;
