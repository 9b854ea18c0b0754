-- Least privilege: a role for each kind of client, so a leaked query-api
-- password cannot change data and a leaked worker password cannot change the
-- schema.
--
--   energy_writer  ingest-worker: reads and writes rows, manages partitions
--                  through the two functions below; no DDL of its own.
--   energy_reader  query-api: SELECT only.
--
-- Both are NOLOGIN group roles: an operator creates login roles in them
-- (README, "Database roles"), e.g.
--   CREATE ROLE query_api LOGIN PASSWORD '...' IN ROLE energy_reader;
-- Roles belong to the whole cluster; this migration creates them when missing
-- (the migrating role needs CREATEROLE then) and grants them rights in this
-- database. Several databases of one cluster may migrate at once, hence the
-- handler for a concurrent creation.

DO $$
DECLARE
    wanted text;
BEGIN
    FOREACH wanted IN ARRAY ARRAY['energy_writer', 'energy_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by another database's migration
            END;
        END IF;
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA public TO energy_writer, energy_reader;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO energy_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO energy_writer;
-- Tables created later by the migrating role (new partitions, future
-- migrations) get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO energy_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO energy_writer;

-- Partition management runs with the owner's rights (creating and dropping
-- partitions needs ownership of the parent), for the writer only. A fixed
-- search_path keeps a caller from substituting its own objects.
ALTER FUNCTION energy_ensure_partitions(text, date, date, boolean)
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION energy_drop_partitions_before(text, date, boolean)
    SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION energy_drop_partitions_before(text, date, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date, boolean) TO energy_writer;
GRANT EXECUTE ON FUNCTION energy_drop_partitions_before(text, date, boolean) TO energy_writer;
