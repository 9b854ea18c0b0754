-- Running totals in the per-vehicle figures, so that a window's middle is
-- the difference of two rows (the bucket before it and its last bucket)
-- instead of a range of buckets and hours summed per answer: fewer plan
-- nodes per answer, which is what its cost was (BENCHMARKS.md).
--
-- Each row keeps its bucket's own figures (the pass recomputes a bucket
-- from them and the GIN index finds a meter's buckets by `meters`) and
-- adds, over its chain (the vehicle's run of consecutive buckets it
-- belongs to, from `chain_from` on), the totals of every bucket up to and
-- including its own. Two rows of the same chain differ by exactly the
-- figures of the buckets after the first through the second; rows of
-- different chains (a gap between them) are never subtracted.
--
-- The figures are a derived cache: they are emptied here and the worker's
-- passes fill them again from the kept history (a restart of the range).

TRUNCATE vehicle_figures, figure_marks;
UPDATE figure_ranges SET after = NULL, through = NULL;

ALTER TABLE vehicle_figures DROP CONSTRAINT vehicle_figures_pkey;
-- Only five-minute rows now: the hours summed ahead of the answer go.
ALTER TABLE vehicle_figures DROP COLUMN minutes;

ALTER TABLE vehicle_figures
    -- The first bucket end of the row's chain.
    ADD COLUMN chain_from timestamptz NOT NULL,
    ADD COLUMN total_vehicle_readings bigint NOT NULL,
    ADD COLUMN total_dc float8 NOT NULL,
    ADD COLUMN total_battery_temp float8 NOT NULL,
    ADD COLUMN total_meter_readings bigint NOT NULL,
    ADD COLUMN total_ac float8 NOT NULL,
    -- The meters that could count for the vehicle in the chain's kept
    -- buckets up to this one (their spans touched a bucket), with the
    -- last such bucket of each (`spanned_at`) and the last bucket in which
    -- its readings counted (`counted_at`, NULL if none). An answer
    -- checks the meters' marks against all of them (a superset of the
    -- middle's meters), and names as counted those with `counted_at`
    -- after the middle's start.
    ADD COLUMN recent_meters text[] NOT NULL,
    ADD COLUMN spanned_at timestamptz[] NOT NULL,
    ADD COLUMN counted_at timestamptz[] NOT NULL;

COMMENT ON COLUMN vehicle_figures.whole_meter IS
    'The one meter counting throughout the bucket; '''' when no meter''s span touches it; NULL when several do or one starts or ends inside it';

-- The two rows an answer reads are found by the key, the totals ride in
-- its index (index-only); the meters' arrays, read for the last row only,
-- stay in the heap (an index tuple has a size limit, the arrays do not).
ALTER TABLE vehicle_figures ADD PRIMARY KEY (vehicle_id, bucket_end)
    INCLUDE (chain_from, whole_meter, total_vehicle_readings, total_dc, total_battery_temp,
             total_meter_readings, total_ac);

-- Statistics from the start for the two small tables every answer reads,
-- so that plans made before autovacuum first visits them are the plans
-- made after (query-api's tests/explain.rs); autovacuum keeps them since.
ANALYZE figure_marks, figure_ranges;
