-- Readings history, current state and vehicle-to-meter assignments.
--
-- History tables are keyed by (device id, event time): that key is what makes a
-- re-delivered or re-sent reading a duplicate (first one wins), and its index is
-- what the 24-hour analytics read as a range scan.

CREATE TABLE vehicle_readings (
    vehicle_id       text             NOT NULL,
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    PRIMARY KEY (vehicle_id, recorded_at)
);

CREATE TABLE meter_readings (
    meter_id        text             NOT NULL,
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    PRIMARY KEY (meter_id, recorded_at)
);

-- Current state: one row per device, holding its newest reading by event time.
CREATE TABLE vehicles_current (
    vehicle_id       text             PRIMARY KEY,
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE meters_current (
    meter_id        text             PRIMARY KEY,
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    updated_at      timestamptz      NOT NULL DEFAULT now()
);

-- Assignment events: from starts_at on, vehicle_id charges through meter_id
-- (NULL: through no meter). An assignment's end is not stored: it is the next
-- event of the same vehicle, or the next assignment of the same meter to
-- another vehicle, whichever comes first. Deriving it at query time keeps
-- out-of-order arrival correct without rewriting earlier rows.
CREATE TABLE assignments (
    vehicle_id text        NOT NULL,
    starts_at  timestamptz NOT NULL,
    meter_id   text,
    PRIMARY KEY (vehicle_id, starts_at)
);

CREATE INDEX assignments_by_meter ON assignments (meter_id, starts_at) WHERE meter_id IS NOT NULL;
