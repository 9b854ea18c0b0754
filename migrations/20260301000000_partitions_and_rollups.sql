-- Day partitions for the readings history, hourly rollups partitioned by
-- month, and the functions that create and drop partitions (called by the
-- worker, and below to move existing data).
--
-- All days and hours are UTC. An hourly rollup row covers the half-open
-- hour (hour_end - 1 hour, hour_end], the same shape as analytics windows
-- (from, to], so a window whose ends fall on whole hours is exactly a set of
-- rollup rows.

-- The end of the hour that holds t: t itself on a whole hour, else the next whole hour.
CREATE FUNCTION energy_hour_end(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('1 hour', t - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00') + interval '1 hour';

-- The start of the hour that holds t (t itself on a whole hour).
CREATE FUNCTION energy_hour_start(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('1 hour', t, timestamptz '2000-01-01 00:00:00+00');

-- Creates the missing partitions of `parent` covering first_day..last_day
-- (days, or the months holding them when `monthly`). Safe to run
-- concurrently from several workers. Returns how many it created.
CREATE FUNCTION energy_ensure_partitions(parent text, first_day date, last_day date, monthly boolean)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    lo date := CASE WHEN monthly THEN date_trunc('month', first_day)::date ELSE first_day END;
    hi date;
    child text;
    created integer := 0;
BEGIN
    WHILE lo <= last_day LOOP
        IF monthly THEN
            hi := (lo + interval '1 month')::date;
            child := parent || '_p' || to_char(lo, 'YYYYMM');
        ELSE
            hi := lo + 1;
            child := parent || '_p' || to_char(lo, 'YYYYMMDD');
        END IF;
        IF to_regclass(quote_ident(child)) IS NULL THEN
            BEGIN
                EXECUTE format(
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

-- Drops the partitions of `parent` that end on or before `cutoff`: whole
-- days (or months) older than the retention. Returns how many it dropped.
CREATE FUNCTION energy_drop_partitions_before(parent text, cutoff date, monthly boolean)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    child text;
    suffix text;
    partition_end date;
    dropped integer := 0;
BEGIN
    FOR child IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = parent
    LOOP
        suffix := substr(child, length(parent) + 3);
        IF monthly AND suffix ~ '^\d{6}$' THEN
            partition_end := (to_date(suffix, 'YYYYMM') + interval '1 month')::date;
        ELSIF NOT monthly AND suffix ~ '^\d{8}$' THEN
            partition_end := to_date(suffix, 'YYYYMMDD') + 1;
        ELSE
            CONTINUE; -- not one of ours
        END IF;
        IF partition_end <= cutoff THEN
            EXECUTE format('DROP TABLE IF EXISTS %I', child); -- another worker may drop it first
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

-- Move the history tables to day partitions, keeping their data.
ALTER TABLE vehicle_readings RENAME TO vehicle_readings_v1;
ALTER INDEX vehicle_readings_pkey RENAME TO vehicle_readings_v1_pkey;
ALTER TABLE meter_readings RENAME TO meter_readings_v1;
ALTER INDEX meter_readings_pkey RENAME TO meter_readings_v1_pkey;

CREATE TABLE vehicle_readings (
    vehicle_id       text             NOT NULL,
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    PRIMARY KEY (vehicle_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE meter_readings (
    meter_id        text             NOT NULL,
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    PRIMARY KEY (meter_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE vehicle_hourly (
    vehicle_id       text             NOT NULL,
    hour_end         timestamptz      NOT NULL,
    readings         bigint           NOT NULL,
    sum_dc           double precision NOT NULL,
    sum_battery_temp double precision NOT NULL,
    PRIMARY KEY (vehicle_id, hour_end)
) PARTITION BY RANGE (hour_end);

CREATE TABLE meter_hourly (
    meter_id    text             NOT NULL,
    hour_end    timestamptz      NOT NULL,
    readings    bigint           NOT NULL,
    sum_ac      double precision NOT NULL,
    min_ac      double precision NOT NULL,
    max_ac      double precision NOT NULL,
    sum_voltage double precision NOT NULL,
    min_voltage double precision NOT NULL,
    max_voltage double precision NOT NULL,
    PRIMARY KEY (meter_id, hour_end)
) PARTITION BY RANGE (hour_end);

SELECT energy_ensure_partitions(t.parent, t.first_day, t.last_day, t.monthly)
FROM (
    SELECT 'vehicle_readings' AS parent, (min(recorded_at) AT TIME ZONE 'UTC')::date AS first_day,
           (max(recorded_at) AT TIME ZONE 'UTC')::date AS last_day, false AS monthly
    FROM vehicle_readings_v1
    UNION ALL
    SELECT 'meter_readings', (min(recorded_at) AT TIME ZONE 'UTC')::date, (max(recorded_at) AT TIME ZONE 'UTC')::date, false
    FROM meter_readings_v1
    UNION ALL
    SELECT 'vehicle_hourly', (min(energy_hour_end(recorded_at)) AT TIME ZONE 'UTC')::date,
           (max(energy_hour_end(recorded_at)) AT TIME ZONE 'UTC')::date, true
    FROM vehicle_readings_v1
    UNION ALL
    SELECT 'meter_hourly', (min(energy_hour_end(recorded_at)) AT TIME ZONE 'UTC')::date,
           (max(energy_hour_end(recorded_at)) AT TIME ZONE 'UTC')::date, true
    FROM meter_readings_v1
) t
WHERE t.first_day IS NOT NULL;

INSERT INTO vehicle_readings SELECT * FROM vehicle_readings_v1;
INSERT INTO meter_readings SELECT * FROM meter_readings_v1;
INSERT INTO vehicle_hourly
SELECT vehicle_id, energy_hour_end(recorded_at), count(*), sum(kwh_delivered_dc), sum(battery_temp)
FROM vehicle_readings_v1 GROUP BY 1, 2;
INSERT INTO meter_hourly
SELECT meter_id, energy_hour_end(recorded_at), count(*), sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
       sum(voltage), min(voltage), max(voltage)
FROM meter_readings_v1 GROUP BY 1, 2;

DROP TABLE vehicle_readings_v1;
DROP TABLE meter_readings_v1;

-- Fleet-wide questions ("every vehicle over this window") read history by
-- time across devices. Rows arrive roughly in time order, so a BRIN index
-- finds a window's blocks for a fraction of a B-tree's size and write cost.
CREATE INDEX vehicle_readings_by_time ON vehicle_readings USING brin (recorded_at);
CREATE INDEX meter_readings_by_time ON meter_readings USING brin (recorded_at);
CREATE INDEX vehicle_hourly_by_hour ON vehicle_hourly (hour_end);
