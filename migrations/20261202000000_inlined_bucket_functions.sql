-- energy_bucket_end and energy_hour_end were declared IMMUTABLE, but their
-- bodies subtract and add intervals, which PostgreSQL marks STABLE
-- (timestamptz ± interval depends on the time zone for days and months).
-- PostgreSQL inlines a SQL function only when its body is no more volatile
-- than its declaration, so every call ran through the SQL-function
-- executor: once per row in the worker's rollup statements, and once per
-- evaluation of every cut point in query-api's index conditions. Declared
-- STABLE, which is what they are to the planner, they are inlined into the
-- calling statement (query-api/tests/explain.rs checks it). Nothing indexes
-- or partitions on them, so nothing requires IMMUTABLE. The two `_start`
-- functions call date_bin alone, which is immutable: they were inlined
-- already. Measured on the benchmark's data set: the 24-hour answer's
-- statement about 1.8 times as fast (BENCHMARKS.md, "Where the time goes").
CREATE OR REPLACE FUNCTION energy_bucket_end(t timestamptz, width interval) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN date_bin(width, t - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00') + width;

CREATE OR REPLACE FUNCTION energy_hour_end(t timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN date_bin('1 hour', t - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00') + interval '1 hour';
