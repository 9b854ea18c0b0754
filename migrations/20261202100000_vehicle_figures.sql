-- Per-vehicle five-minute figures with the meters' energy already
-- attributed, so that a vehicle's 24-hour answer reads its middle as one
-- range of one table instead of the pieces of every meter span.
--
-- The worker computes them (ingest-worker's figures.rs) from exactly what
-- query-api would read, with the same SQL blocks, for buckets that have
-- closed: the summarised range `(after, through]` in figure_ranges. The
-- raw tables stay the source of truth; a figure is used only while
-- nothing it was computed from has changed since:
--
-- * Every change of a five-minute rollup row (a reading stored, late ones
--   included; a register reading's energy derived again) and every stored
--   assignment inserts a mark into figure_marks, in the writing
--   transaction, when it falls in the marked range (the triggers below).
--   A reading or an assignment is therefore visible exactly when its mark
--   is: a query that sees a mark over a vehicle's bucket, or over a meter
--   that could count for it, reads that window from the raw pieces.
-- * The worker recomputes the figures marks cover in one REPEATABLE READ
--   snapshot and deletes exactly the marks that snapshot held; marks
--   committed after it stay until the next pass.
-- * The marked range always covers the summarised one. Writers read it
--   FOR SHARE; the worker widens it in a transaction of its own before it
--   computes new buckets, which waits for every writer that read the old
--   range: those are committed before the snapshot that computes the new
--   buckets, and every later writer marks them.

CREATE TABLE vehicle_figures (
    vehicle_id       text        NOT NULL,
    -- 5: a five-minute bucket; 60: a whole hour, the sum of its twelve
    -- buckets (written with them, and only while all twelve are held), so
    -- that a 24-hour window reads about 23 hours and at most 22 buckets.
    minutes          smallint    NOT NULL CHECK (minutes IN (5, 60)),
    bucket_end       timestamptz NOT NULL,
    vehicle_readings bigint      NOT NULL,
    sum_dc           float8      NOT NULL,
    sum_battery_temp float8      NOT NULL,
    meter_readings   bigint      NOT NULL,
    sum_ac           float8      NOT NULL,
    -- Meters that could count for the vehicle in the bucket (its spans'),
    -- readings or not: a mark on one of them makes the figure stale.
    meters           text[]      NOT NULL,
    -- Those whose readings counted (the answer's meterIds).
    meter_ids        text[]      NOT NULL,
    -- The figures ride in the key's index: a window's buckets are read by
    -- an index-only scan of one vehicle's entries, not from as many heap
    -- pages (a pass writes every vehicle's bucket together). Both widths
    -- in one table: a statement locks every relation it reads, and past
    -- 16 a backend's locks leave its fast path for the shared lock table,
    -- where 16 clients contend (measured: BENCHMARKS.md).
    PRIMARY KEY (vehicle_id, minutes, bucket_end)
        INCLUDE (vehicle_readings, sum_dc, sum_battery_temp, meter_readings, sum_ac, meters, meter_ids)
);
CREATE INDEX vehicle_figures_bucket_end ON vehicle_figures (bucket_end);
-- The worker finds the figures a meter's mark makes stale by their meters.
CREATE INDEX vehicle_figures_meters ON vehicle_figures USING gin (meters);

CREATE TABLE figure_marks (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'v' a vehicle, 'm' a meter (ids of the two kinds may be equal).
    device_kind "char"      NOT NULL CHECK (device_kind IN ('v', 'm')),
    device_id   text        NOT NULL,
    -- Buckets whose end is in [from_end, to_end] (to_end 'infinity': all
    -- from from_end on, for an assignment).
    from_end    timestamptz NOT NULL,
    to_end      timestamptz NOT NULL
);
CREATE INDEX figure_marks_device ON figure_marks (device_kind, device_id, from_end);

-- 'marked': bucket ends (after, through] whose changes are marked;
-- 'summarised': those vehicle_figures holds. NULL: none (at first).
CREATE TABLE figure_ranges (
    name    text        PRIMARY KEY CHECK (name IN ('marked', 'summarised')),
    after   timestamptz,
    through timestamptz,
    CHECK ((after IS NULL) = (through IS NULL) AND after <= through)
);
INSERT INTO figure_ranges VALUES ('marked', NULL, NULL), ('summarised', NULL, NULL);

-- Marks the five-minute buckets a rollup statement changed, one mark per
-- device and statement spanning its buckets in the marked range.
-- TG_ARGV[0]: 'v' or 'm'.
CREATE FUNCTION energy_mark_rollup_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    marked figure_ranges;
BEGIN
    SELECT * INTO marked FROM figure_ranges WHERE name = 'marked' FOR SHARE;
    IF marked.through IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_ARGV[0] = 'v' THEN
        INSERT INTO figure_marks (device_kind, device_id, from_end, to_end)
        SELECT 'v', vehicle_id, min(bucket_end), max(bucket_end) FROM changed
        WHERE bucket_end > marked.after AND bucket_end <= marked.through
        GROUP BY vehicle_id;
    ELSE
        INSERT INTO figure_marks (device_kind, device_id, from_end, to_end)
        SELECT 'm', meter_id, min(bucket_end), max(bucket_end) FROM changed
        WHERE bucket_end > marked.after AND bucket_end <= marked.through
        GROUP BY meter_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER vehicle_5min_inserted AFTER INSERT ON vehicle_5min
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_mark_rollup_changes('v');
CREATE TRIGGER vehicle_5min_updated AFTER UPDATE ON vehicle_5min
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_mark_rollup_changes('v');
CREATE TRIGGER meter_5min_inserted AFTER INSERT ON meter_5min
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_mark_rollup_changes('m');
CREATE TRIGGER meter_5min_updated AFTER UPDATE ON meter_5min
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_mark_rollup_changes('m');

-- An assignment from t changes who owns its vehicle's and its meter's
-- buckets from t's bucket on: both are marked to the end of time.
CREATE FUNCTION energy_mark_assignments() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    marked figure_ranges;
BEGIN
    SELECT * INTO marked FROM figure_ranges WHERE name = 'marked' FOR SHARE;
    IF marked.through IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO figure_marks (device_kind, device_id, from_end, to_end)
    SELECT kind, device_id, min(energy_bucket_end(starts_at, interval '5 minutes')), 'infinity'
    FROM (
        SELECT 'v'::"char" AS kind, vehicle_id AS device_id, starts_at FROM inserted
        UNION ALL
        SELECT 'm', meter_id, starts_at FROM inserted WHERE meter_id IS NOT NULL
    ) named
    WHERE energy_bucket_end(starts_at, interval '5 minutes') <= marked.through
    GROUP BY kind, device_id;
    RETURN NULL;
END $$;

CREATE TRIGGER assignments_inserted AFTER INSERT ON assignments
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION energy_mark_assignments();
