-- Statistics that keep up with the fleet's own tables, as
-- energy_analyze_partitions keeps them up with a filling day.
--
-- `assignments` and the current-state tables are plain tables that grow
-- with the fleet, not by day; autovacuum analyses them, but may do so on
-- their first rows while a fleet is being loaded, and comes back only
-- after its naptime and 10 % more rows. Statistics of the first few
-- devices' assignments make each vehicle seem to have several times its
-- real count, and the statements that resolve meter spans then join a
-- whole day of meter readings by hash instead of probing it by key (seen
-- in the plan-shape test: assignments analysed a third of the way through
-- the load). The worker calls this after each batch: a table at least
-- twice the size (relpages) its last ANALYZE or VACUUM saw, never analysed
-- included, is analysed, so its statistics describe at least half its rows
-- unless a VACUUM came between (the rule of energy_analyze_partitions). A
-- table whose lock is not granted within the caller's lock_timeout (an
-- autovacuum at work on it) is left to the next batch without undoing the
-- others; a table that does not exist is skipped.
CREATE FUNCTION energy_analyze_grown_fleet_tables()
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text;
    fleet_table regclass;
    analysed integer := 0;
BEGIN
    FOREACH name IN ARRAY ARRAY['public.assignments', 'public.vehicles_current',
                                'public.meters_current', 'public.meter_assignment_revisions'] LOOP
        fleet_table := pg_catalog.to_regclass(name);
        IF fleet_table IS NOT NULL AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_class c
               WHERE c.oid = fleet_table
                 AND pg_catalog.pg_relation_size(fleet_table) > 0
                 AND pg_catalog.pg_relation_size(fleet_table)
                     >= 2 * c.relpages::bigint * pg_catalog.current_setting('block_size')::bigint) THEN
            BEGIN
                EXECUTE pg_catalog.format('ANALYZE %s', fleet_table);
                analysed := analysed + 1;
            EXCEPTION WHEN lock_not_available THEN
                NULL;
            END;
        END IF;
    END LOOP;
    RETURN analysed;
END
$$;

REVOKE EXECUTE ON FUNCTION energy_analyze_grown_fleet_tables() FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'energy_writer') THEN
        GRANT EXECUTE ON FUNCTION energy_analyze_grown_fleet_tables() TO energy_writer;
    END IF;
END $$;
