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
-- and grants them rights in this database. Without CREATEROLE it warns and
-- grants to whichever exist, so an upgrade never fails on it. Several
-- databases of one cluster may migrate at once, hence the handler for a
-- concurrent creation.

DO $$
DECLARE
    wanted text;
BEGIN
    FOREACH wanted IN ARRAY ARRAY['energy_writer', 'energy_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL; -- created meanwhile by another database's migration
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'role % not created: the migrating role lacks CREATEROLE; '
                        'create it (NOLOGIN) and run the migrations again to grant it', wanted;
            END;
        END IF;
    END LOOP;
END $$;

-- Closes CVE-2018-1058 on PostgreSQL 14 and older (15 has it by default):
-- without it any role could create objects in public, e.g. a function that
-- shadows one the owner-run functions below call.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Partition management runs with the owner's rights (creating and dropping
-- partitions needs ownership of the parent), for the writer only, and only
-- on the four partitioned tables, for a bounded span: a writer can neither
-- drop other tables nor flood the catalog. A fixed search_path and
-- explicitly typed calls keep a caller from substituting its own objects.
CREATE OR REPLACE FUNCTION energy_ensure_partitions(parent text, first_day date, last_day date, monthly boolean)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    lo date := CASE WHEN monthly THEN pg_catalog.date_trunc('month', first_day::timestamp)::date ELSE first_day END;
    hi date;
    child text;
    created integer := 0;
BEGIN
    IF parent NOT IN ('vehicle_readings', 'meter_readings', 'vehicle_hourly', 'meter_hourly') THEN
        RAISE EXCEPTION 'energy_ensure_partitions: % is not a partitioned table of this schema', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF last_day - first_day > 4000 THEN
        RAISE EXCEPTION 'energy_ensure_partitions: % days at once is more than 4000', last_day - first_day
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    WHILE lo <= last_day LOOP
        IF monthly THEN
            hi := (lo + interval '1 month')::date;
            child := parent || '_p' || pg_catalog.to_char(lo::timestamp, 'YYYYMM');
        ELSE
            hi := lo + 1;
            child := parent || '_p' || pg_catalog.to_char(lo::timestamp, 'YYYYMMDD');
        END IF;
        IF pg_catalog.to_regclass(pg_catalog.quote_ident(child)) IS NULL THEN
            BEGIN
                EXECUTE pg_catalog.format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    child, parent, lo::timestamp AT TIME ZONE 'UTC', hi::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
                NULL; -- another worker created it meanwhile
            END;
        END IF;
        lo := hi;
    END LOOP;
    RETURN created;
END
$$;

CREATE OR REPLACE FUNCTION energy_drop_partitions_before(parent text, cutoff date, monthly boolean)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    child text;
    suffix text;
    partition_end date;
    dropped integer := 0;
BEGIN
    IF parent NOT IN ('vehicle_readings', 'meter_readings', 'vehicle_hourly', 'meter_hourly') THEN
        RAISE EXCEPTION 'energy_drop_partitions_before: % is not a partitioned table of this schema', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR child IN
        SELECT c.relname FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
        WHERE p.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(parent))
    LOOP
        suffix := pg_catalog.substr(child, pg_catalog.length(parent) + 3);
        IF monthly AND suffix ~ '^\d{6}$' THEN
            partition_end := (pg_catalog.to_date(suffix, 'YYYYMM') + interval '1 month')::date;
        ELSIF NOT monthly AND suffix ~ '^\d{8}$' THEN
            partition_end := pg_catalog.to_date(suffix, 'YYYYMMDD') + 1;
        ELSE
            CONTINUE; -- not one of ours
        END IF;
        IF partition_end <= cutoff THEN
            EXECUTE pg_catalog.format('DROP TABLE IF EXISTS %I', child); -- another worker may drop it first
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

REVOKE EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION energy_drop_partitions_before(text, date, boolean) FROM PUBLIC;

-- Rights, to whichever of the two roles exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_reader') THEN
        GRANT USAGE ON SCHEMA public TO energy_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO energy_reader;
        -- Tables created later by the migrating role (new partitions, future
        -- migrations) get the same rights.
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO energy_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT USAGE ON SCHEMA public TO energy_writer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO energy_writer;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO energy_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO energy_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO energy_writer;
        -- The migration history is the owner's: the writer reads it (the
        -- start-up check) and cannot rewrite it.
        REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM energy_writer;
        GRANT EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date, boolean) TO energy_writer;
        GRANT EXECUTE ON FUNCTION energy_drop_partitions_before(text, date, boolean) TO energy_writer;
    END IF;
END $$;
