-- Statistics that keep up with a filling partition. A day's (or month's)
-- partition is created empty ahead of time; until it is analysed the
-- planner guesses its contents, and statistics taken from its first rows
-- describe a few devices where there will be thousands (n_distinct is kept
-- as a count), so a query may be planned differently from the same query
-- after a full ANALYZE. energy_analyze_partitions gains `only_grown`: the
-- worker calls it so after each batch for the days it wrote, analysing only
-- a partition at least twice the size its last analysis saw (never analysed
-- included). A filling partition is so analysed each time it doubles, a
-- handful of times a day, each costing a bounded sample; autovacuum's own
-- thresholds take over once growth slows. The upkeep still calls it without
-- the flag, analysing the days being filled whatever their size.
DROP FUNCTION energy_analyze_partitions(date, date);

CREATE FUNCTION energy_analyze_partitions(first_day date, last_day date, only_grown boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
    day date;
    child regclass;
    analysed integer := 0;
BEGIN
    IF last_day - first_day > 31 THEN
        RAISE EXCEPTION 'energy_analyze_partitions: % days at once is more than 31', last_day - first_day
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR spec IN SELECT * FROM public.energy_partitioned_tables LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            child := pg_catalog.to_regclass(pg_catalog.quote_ident(spec.parent || '_p' ||
                pg_catalog.to_char(day::timestamp,
                    CASE WHEN spec.granularity = 'month' THEN 'YYYYMM' ELSE 'YYYYMMDD' END)));
            -- With only_grown: the file is at least twice the size the last
            -- analysis saw (relpages; 0 when never analysed). File sizes,
            -- unlike the cumulative statistics' counters, are current at once.
            IF child IS NOT NULL AND (NOT only_grown OR EXISTS (
                   SELECT 1 FROM pg_catalog.pg_class c
                   WHERE c.oid = child
                     AND pg_catalog.pg_relation_size(child) > 0
                     AND pg_catalog.pg_relation_size(child)
                         >= 2 * c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint)) THEN
                EXECUTE pg_catalog.format('ANALYZE %s', child);
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

REVOKE EXECUTE ON FUNCTION energy_analyze_partitions(date, date, boolean) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT EXECUTE ON FUNCTION energy_analyze_partitions(date, date, boolean) TO energy_writer;
    END IF;
END $$;
