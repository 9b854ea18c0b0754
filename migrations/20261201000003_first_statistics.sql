-- Statistics that keep up with a filling partition. A day's (or month's)
-- partition is created empty ahead of time; until it is analysed the
-- planner guesses its contents, and statistics taken from its first rows
-- describe a few devices where there will be thousands (n_distinct is kept
-- as a count), so a query may be planned differently from the same query
-- after a full ANALYZE. The worker calls this after each batch for the days
-- it wrote: a partition at least twice the size its last analysis saw
-- (never analysed included) is analysed now. A filling
-- partition is so analysed each time it doubles, a handful of times a day,
-- each costing a bounded sample; autovacuum's own thresholds take over
-- once growth slows. Days as in energy_analyze_partitions.
CREATE FUNCTION energy_analyze_new_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    spec public.energy_partitioned_tables%ROWTYPE;
    day date;
    child regclass;
    analysed integer := 0;
BEGIN
    IF last_day - first_day > 31 THEN
        RAISE EXCEPTION 'energy_analyze_new_partitions: % days at once is more than 31', last_day - first_day
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR spec IN SELECT * FROM public.energy_partitioned_tables LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            child := pg_catalog.to_regclass(pg_catalog.quote_ident(spec.parent || '_p' ||
                pg_catalog.to_char(day::timestamp,
                    CASE WHEN spec.granularity = 'month' THEN 'YYYYMM' ELSE 'YYYYMMDD' END)));
            -- The partition's file is at least twice the size its last
            -- analysis saw (relpages; 0 when never analysed): the statistics
            -- describe less than half of what is there. File sizes, unlike
            -- the cumulative statistics' counters, are current at once.
            IF child IS NOT NULL
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                           WHERE c.oid = child
                             AND pg_catalog.pg_relation_size(child)
                                 >= 2 * c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint
                             AND pg_catalog.pg_relation_size(child) > 0) THEN
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

REVOKE EXECUTE ON FUNCTION energy_analyze_new_partitions(date, date) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT EXECUTE ON FUNCTION energy_analyze_new_partitions(date, date) TO energy_writer;
    END IF;
END $$;
