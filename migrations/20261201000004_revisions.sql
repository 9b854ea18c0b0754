-- Revisions, so that query-api can keep the answers it computed and know
-- with a few key lookups whether they still hold. Every batch transaction
-- that stores a reading of a device, late ones included, sets the device's
-- current-state row to its own transaction id (pg_current_xact_id(): 64
-- bits, never reused); an assignment sets its vehicle's row the same way,
-- and its meter's row in meter_assignment_revisions: a meter assigned to
-- another vehicle ends the span of the vehicle it served. An answer read
-- when the rows of its vehicle and meters had the revisions they have now
-- was computed from the same data. Existing rows start at 0: any later
-- write moves them on.
--
-- Meters keep their assignment revision apart from their current state:
-- assignments are written by the worker that owns their vehicle's Kafka
-- partition, a meter's readings by the one that owns the meter's, and two
-- transactions locking each other's meter rows in two steps could deadlock.
ALTER TABLE vehicles_current ADD COLUMN revision bigint NOT NULL DEFAULT 0;
ALTER TABLE meters_current ADD COLUMN revision bigint NOT NULL DEFAULT 0;

CREATE TABLE meter_assignment_revisions (
    meter_id text   PRIMARY KEY,
    revision bigint NOT NULL
);
