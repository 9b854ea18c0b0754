-- Partitions: one list of the partitioned tables, and partition changes
-- that never freeze ingest or queries.
--
-- The list, read by the partition functions (their allow-list), the
-- worker's upkeep and the tests, instead of a list in each of them:
--
--   granularity   'day' (history: a partition per UTC day of recorded_at) or
--                 'month' (rollups: a partition per UTC month of hour_end);
--   retention     'readings' (RETENTION_DAYS) or 'rollups' (ROLLUP_RETENTION_DAYS);
--   bucket_end    for a rollup table, its key column: the end of a bucket
--                 (an hour, five minutes). A reading late on day D lands in
--                 the bucket ending at D+1 00:00, so the rows of readings of
--                 days first..last need partitions through last + 1;
--   summarises    for a rollup table, the history table it summarises.
--
-- Locks. `CREATE TABLE .. PARTITION OF` and `DROP TABLE` of a partition take
-- ACCESS EXCLUSIVE on the parent: behind a long query they wait, and every
-- insert and query queues behind them. So a partition is created on its own
-- and then attached (SHARE UPDATE EXCLUSIVE on the parent: reads and writes
-- go on), and each creation or drop runs in a subtransaction that gives up
-- at the caller's `lock_timeout`: it is counted as deferred, and the worker
-- tries again later. (`DETACH PARTITION .. CONCURRENTLY` cannot run inside
-- a function, and only the owner's functions may change the tables; a
-- drop bounded by lock_timeout holds others up for no longer than that.)
--
-- Rollups follow their day: when a day's history partition is created, the
-- rollup hours of that day are emptied. At creation the day holds no row,
-- so any rollup of its hours is left over from a partition of the same day
-- that was dropped (by hand, or by a worker whose clock ran ahead):
-- keeping it would count again the readings that are sent once more.
CREATE TABLE energy_partitioned_tables (
    parent      text PRIMARY KEY,
    granularity text NOT NULL CHECK (granularity IN ('day', 'month')),
    retention   text NOT NULL CHECK (retention IN ('readings', 'rollups')),
    bucket_end  text,
    summarises  text REFERENCES energy_partitioned_tables (parent),
    CHECK ((bucket_end IS NULL) = (summarises IS NULL))
);

INSERT INTO energy_partitioned_tables (parent, granularity, retention, bucket_end, summarises) VALUES
    ('vehicle_readings', 'day', 'readings', NULL, NULL),
    ('meter_readings', 'day', 'readings', NULL, NULL),
    ('vehicle_hourly', 'month', 'rollups', 'hour_end', 'vehicle_readings'),
    ('meter_hourly', 'month', 'rollups', 'hour_end', 'meter_readings');

-- The list is the partition functions' allow-list: the writer reads it and
-- cannot extend it (the default privileges of the roles migration would
-- otherwise let it write here).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON energy_partitioned_tables FROM energy_writer;
        GRANT SELECT ON energy_partitioned_tables TO energy_writer;
    END IF;
END $$;

DROP FUNCTION energy_ensure_partitions(text, date, date, boolean);
DROP FUNCTION energy_drop_partitions_before(text, date, boolean);

-- The list's row for `parent`; refuses (42501) a table that is not on it.
CREATE FUNCTION energy_partition_spec(parent text) RETURNS energy_partitioned_tables
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
BEGIN
    SELECT * INTO spec FROM public.energy_partitioned_tables t WHERE t.parent = energy_partition_spec.parent;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a partitioned table of this schema', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN spec;
END
$$;
REVOKE EXECUTE ON FUNCTION energy_partition_spec(text) FROM PUBLIC;

-- Creates the missing partitions of `parent` that hold the rows of readings
-- taken on first_day..last_day (days, or the months holding them), each
-- created on its own and attached. Safe to run concurrently from several
-- workers. Returns how many it created, and how many it deferred because a
-- lock was not granted within the caller's lock_timeout.
CREATE FUNCTION energy_ensure_partitions(parent text, first_day date, last_day date,
                                         OUT created integer, OUT deferred integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
    rollup public.energy_partitioned_tables%ROWTYPE;
    lo date;
    hi date;
    child text;
BEGIN
    created := 0;
    deferred := 0;
    spec := public.energy_partition_spec(parent);
    IF last_day - first_day > 4000 THEN
        RAISE EXCEPTION 'energy_ensure_partitions: % days at once is more than 4000', last_day - first_day
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF spec.bucket_end IS NOT NULL THEN
        last_day := last_day + 1;
    END IF;
    lo := CASE WHEN spec.granularity = 'month'
               THEN pg_catalog.date_trunc('month', first_day::timestamp)::date ELSE first_day END;
    WHILE lo <= last_day LOOP
        IF spec.granularity = 'month' THEN
            hi := (lo + interval '1 month')::date;
            child := parent || '_p' || pg_catalog.to_char(lo::timestamp, 'YYYYMM');
        ELSE
            hi := lo + 1;
            child := parent || '_p' || pg_catalog.to_char(lo::timestamp, 'YYYYMMDD');
        END IF;
        IF pg_catalog.to_regclass(pg_catalog.quote_ident(child)) IS NULL THEN
            BEGIN
                EXECUTE pg_catalog.format(
                    'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', child, parent);
                EXECUTE pg_catalog.format(
                    'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    parent, child, lo::timestamp AT TIME ZONE 'UTC', hi::timestamp AT TIME ZONE 'UTC');
                FOR rollup IN
                    SELECT * FROM public.energy_partitioned_tables r
                    WHERE r.summarises = energy_ensure_partitions.parent
                LOOP
                    EXECUTE pg_catalog.format(
                        'DELETE FROM %I WHERE %I > %L AND %I <= %L',
                        rollup.parent, rollup.bucket_end, lo::timestamp AT TIME ZONE 'UTC',
                        rollup.bucket_end, hi::timestamp AT TIME ZONE 'UTC');
                END LOOP;
                created := created + 1;
            EXCEPTION
                WHEN duplicate_table OR invalid_object_definition THEN
                    NULL; -- another worker created it meanwhile
                WHEN lock_not_available THEN
                    deferred := deferred + 1;
            END;
        END IF;
        lo := hi;
    END LOOP;
END
$$;

-- Drops the partitions of `parent` that end on or before `cutoff`: whole
-- days (or months) older than the retention. Returns how many it dropped,
-- and how many it deferred because a lock was not granted within the
-- caller's lock_timeout.
CREATE FUNCTION energy_drop_partitions_before(parent text, cutoff date,
                                              OUT dropped integer, OUT deferred integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
    child text;
    suffix text;
    partition_end date;
BEGIN
    dropped := 0;
    deferred := 0;
    spec := public.energy_partition_spec(parent);
    FOR child IN
        SELECT c.relname FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
        WHERE p.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(parent))
    LOOP
        suffix := pg_catalog.substr(child, pg_catalog.length(parent) + 3);
        IF spec.granularity = 'month' AND suffix ~ '^\d{6}$' THEN
            partition_end := (pg_catalog.to_date(suffix, 'YYYYMM') + interval '1 month')::date;
        ELSIF spec.granularity = 'day' AND suffix ~ '^\d{8}$' THEN
            partition_end := pg_catalog.to_date(suffix, 'YYYYMMDD') + 1;
        ELSE
            CONTINUE; -- not one of ours
        END IF;
        IF partition_end <= cutoff THEN
            BEGIN
                EXECUTE pg_catalog.format('DROP TABLE IF EXISTS %I', child); -- another worker may drop it first
                dropped := dropped + 1;
            EXCEPTION WHEN lock_not_available THEN
                deferred := deferred + 1;
            END;
        END IF;
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION energy_drop_partitions_before(text, date) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT EXECUTE ON FUNCTION energy_ensure_partitions(text, date, date) TO energy_writer;
        GRANT EXECUTE ON FUNCTION energy_drop_partitions_before(text, date) TO energy_writer;
    END IF;
END $$;

-- Settings the worker runs with, written by each worker at start-up, so a
-- service configured otherwise can see it: query-api refuses to start with
-- a RETENTION_DAYS the workers do not use (its windows would reach days the
-- workers have dropped, or refuse days they keep).
CREATE TABLE energy_settings (
    name       text        PRIMARY KEY,
    value      text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
