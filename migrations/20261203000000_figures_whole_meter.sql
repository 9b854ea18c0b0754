-- The meter that counts for a vehicle throughout a five-minute bucket, so
-- that an answer reads the meter of its two raw edges from the figures
-- instead of resolving the vehicle's assignments (query-api's figures.rs).
--
-- whole_meter: the one meter whose span on the vehicle covers the whole
-- bucket, when no other span touches it; NULL otherwise (no span: then
-- `meters` is empty; several spans, or one starting or ending inside the
-- bucket), and on hourly rows. Rows written before this column read NULL,
-- which an answer treats as "not known": it resolves the assignments, as
-- before, until the worker's passes write the bucket again.
ALTER TABLE vehicle_figures ADD COLUMN whole_meter text;

-- The edges' rows are read by index-only scans, like the rest.
ALTER TABLE vehicle_figures DROP CONSTRAINT vehicle_figures_pkey,
    ADD PRIMARY KEY (vehicle_id, minutes, bucket_end)
        INCLUDE (vehicle_readings, sum_dc, sum_battery_temp, meter_readings, sum_ac, meters,
                 meter_ids, whole_meter);
