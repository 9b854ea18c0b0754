-- Each bucket's own readings in its figures row, so that an answer reads
-- the window's head (its first, partial bucket) from the row it already
-- reads there instead of from two raw day partitions: the raw edges were
-- half of PostgreSQL's time per answer (BENCHMARKS.md).
--
-- A window `(from, to]` starting inside bucket `(end - 5 min, end]` counts
-- that bucket's readings later than `from`. With the times of the
-- bucket's readings in ascending order, `width_bucket(from, times)` is how
-- many of them are at or before `from` (a binary search), and the sums of
-- the others are read at that offset from arrays of sums over each
-- reading and all later ones ("suffix sums", one element longer than the
-- times, ending in 0).
--
-- The meter's readings are kept only for the bucket's `whole_meter` (the
-- one meter counting throughout it): empty arrays when no meter counts,
-- NULL when several do or a span starts or ends inside the bucket, where
-- an answer resolves the edge's meters from the assignments as before.
--
-- The figures are a derived cache: they are emptied here and the worker's
-- passes fill them again from the kept history (a restart of the range).

TRUNCATE vehicle_figures, figure_marks;
UPDATE figure_ranges SET after = NULL, through = NULL;

ALTER TABLE vehicle_figures
    -- The times of the vehicle's readings in the bucket, ascending, and
    -- for each the sum of its and every later reading's DC energy and
    -- battery temperature, followed by 0.
    ADD COLUMN vehicle_times timestamptz[] NOT NULL,
    ADD COLUMN dc_from float8[] NOT NULL,
    ADD COLUMN battery_temp_from float8[] NOT NULL,
    -- The same for the whole meter's readings and their AC energy.
    ADD COLUMN meter_times timestamptz[],
    ADD COLUMN ac_from float8[],
    ADD CONSTRAINT vehicle_figures_bucket_readings CHECK (
        cardinality(dc_from) = cardinality(vehicle_times) + 1
        AND cardinality(battery_temp_from) = cardinality(vehicle_times) + 1
        AND (meter_times IS NULL) = (whole_meter IS NULL)
        AND (ac_from IS NULL) = (whole_meter IS NULL)
        AND (whole_meter IS NULL OR cardinality(ac_from) = cardinality(meter_times) + 1)
        AND (whole_meter IS DISTINCT FROM '' OR cardinality(meter_times) = 0));

-- TRUNCATE forgets the tables' statistics: analyse the two small ones
-- again, as `figures_running_totals` did (query-api's tests/explain.rs).
ANALYZE figure_marks, figure_ranges;
