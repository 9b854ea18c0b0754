-- Five-minute rollups, beside the hourly ones. A window's partial hours at
-- its edges were read from raw readings: up to an hour of them in all, 3,600
-- rows per stream for a device reporting every second. With five-minute
-- rollups an interval is cut at whole hours and then at whole five
-- minutes, so at most five minutes at each edge come from raw readings,
-- however often a device reports.
--
-- A bucket is the half-open interval (bucket_end - width, bucket_end], like
-- an hour (energy_hour_end) and like a window (from, to]. The tables hold
-- the same figures as the hourly ones, are partitioned by the UTC day of
-- bucket_end, and are kept as long as raw readings: a window may not start
-- before the raw retention, and its edges are all they serve.

-- The end of the bucket of `width` that holds t: t itself on a boundary.
CREATE FUNCTION energy_bucket_end(t timestamptz, width interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin(width, t - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00') + width;

-- The start of the bucket of `width` that holds t (t itself on a boundary).
CREATE FUNCTION energy_bucket_start(t timestamptz, width interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin(width, t, timestamptz '2000-01-01 00:00:00+00');

CREATE TABLE vehicle_5min (
    vehicle_id       text             NOT NULL,
    bucket_end       timestamptz      NOT NULL,
    readings         bigint           NOT NULL,
    sum_dc           double precision NOT NULL,
    sum_battery_temp double precision NOT NULL,
    PRIMARY KEY (vehicle_id, bucket_end)
) PARTITION BY RANGE (bucket_end);

CREATE TABLE meter_5min (
    meter_id    text             NOT NULL,
    bucket_end  timestamptz      NOT NULL,
    readings    bigint           NOT NULL,
    sum_ac      double precision NOT NULL,
    min_ac      double precision NOT NULL,
    max_ac      double precision NOT NULL,
    sum_voltage double precision NOT NULL,
    min_voltage double precision NOT NULL,
    max_voltage double precision NOT NULL,
    PRIMARY KEY (meter_id, bucket_end)
) PARTITION BY RANGE (bucket_end);

-- The fleet view reads every vehicle's edge buckets by time. BRIN, as for
-- raw readings: buckets are written roughly in time order, and a B-tree on
-- the bucket end alone would tempt the planner, for one vehicle's few
-- buckets, away from the (vehicle, end) key.
CREATE INDEX vehicle_5min_by_end ON vehicle_5min USING brin (bucket_end);

INSERT INTO energy_partitioned_tables (parent, granularity, retention, bucket_end, summarises) VALUES
    ('vehicle_5min', 'day', 'readings', 'bucket_end', 'vehicle_readings'),
    ('meter_5min', 'day', 'readings', 'bucket_end', 'meter_readings');

-- Rollups of the readings already stored, so that answers stay whole
-- across the upgrade (this reads every raw reading once).
SELECT energy_ensure_partitions(t.parent, t.first_day, t.last_day)
FROM (
    SELECT 'vehicle_5min' AS parent, (min(recorded_at) AT TIME ZONE 'UTC')::date AS first_day,
           (max(recorded_at) AT TIME ZONE 'UTC')::date AS last_day
    FROM vehicle_readings
    UNION ALL
    SELECT 'meter_5min', (min(recorded_at) AT TIME ZONE 'UTC')::date, (max(recorded_at) AT TIME ZONE 'UTC')::date
    FROM meter_readings
) t
WHERE t.first_day IS NOT NULL;

INSERT INTO vehicle_5min
SELECT vehicle_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_delivered_dc),
       sum(battery_temp)
FROM vehicle_readings GROUP BY 1, 2;
INSERT INTO meter_5min
SELECT meter_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_consumed_ac),
       min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage)
FROM meter_readings GROUP BY 1, 2;

-- Statistics of the partitions being filled. Queries name the partitions
-- their window needs (query-api's sql.rs), so the planner uses leaf
-- statistics; autovacuum keeps them, but only after its next round, and a
-- day filled by a backlog would be planned blind until then. The worker
-- calls this after its upkeep for the days it writes. ANALYZE needs the
-- owner's rights, so it runs with them, on the listed tables only.
CREATE FUNCTION energy_analyze_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
    day date;
    child text;
    analysed integer := 0;
BEGIN
    IF last_day - first_day > 31 THEN
        RAISE EXCEPTION 'energy_analyze_partitions: % days at once is more than 31', last_day - first_day
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR spec IN SELECT * FROM public.energy_partitioned_tables LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            child := spec.parent || '_p' || pg_catalog.to_char(day::timestamp,
                CASE WHEN spec.granularity = 'month' THEN 'YYYYMM' ELSE 'YYYYMMDD' END);
            IF pg_catalog.to_regclass(pg_catalog.quote_ident(child)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('ANALYZE %I', child);
                analysed := analysed + 1;
            END IF;
            day := CASE WHEN spec.granularity = 'month'
                        THEN (pg_catalog.date_trunc('month', day::timestamp) + interval '1 month')::date
                        ELSE day + 1 END;
        END LOOP;
    END LOOP;
    RETURN analysed;
END
$$;

REVOKE EXECUTE ON FUNCTION energy_analyze_partitions(date, date) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT EXECUTE ON FUNCTION energy_analyze_partitions(date, date) TO energy_writer;
    END IF;
END $$;
