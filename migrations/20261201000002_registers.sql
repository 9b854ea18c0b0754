-- Cumulative energy registers (kwhRegisterDc, kwhRegisterAc), beside
-- readings that state their interval's energy.
--
-- A register reading is stored with its register and with the energy of its
-- interval derived from it (shared/src/register.rs states the rule), in the
-- same column as a stated interval's energy: rollups and every query read
-- one column whatever the form, and a window's energy stays a sum. The
-- worker keeps the derived energies and the rollups exact when readings
-- arrive out of order (ingest-worker/src/registers.rs).
--
-- All columns added here are NULL or have a constant default: PostgreSQL
-- adds them to the catalog without rewriting the tables.

ALTER TABLE vehicle_readings
    ADD COLUMN kwh_register_dc double precision,
    -- The register rose more than the ceiling allows for the elapsed time:
    -- the interval's energy is not counted.
    ADD COLUMN register_jump boolean NOT NULL DEFAULT false;

ALTER TABLE meter_readings
    ADD COLUMN kwh_register_ac double precision,
    ADD COLUMN register_jump boolean NOT NULL DEFAULT false;

-- Current state gains the newest reading's register and the device's
-- implausible jumps. `reports_registers` marks devices that have sent a
-- register once: their interval readings arriving late can change a
-- register reading's energy, so the worker derives them too. The two
-- `superseded_` columns hold the reading the row replaced when it last
-- moved forward: the upsert returns them, so a batch of readings newer
-- than everything stored derives its energies without reading history.
ALTER TABLE vehicles_current
    ADD COLUMN kwh_register_dc double precision,
    ADD COLUMN reports_registers boolean NOT NULL DEFAULT false,
    ADD COLUMN register_jumps bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_register_jump_at timestamptz,
    ADD COLUMN superseded_at timestamptz,
    ADD COLUMN superseded_register double precision;

ALTER TABLE meters_current
    ADD COLUMN kwh_register_ac double precision,
    ADD COLUMN reports_registers boolean NOT NULL DEFAULT false,
    ADD COLUMN register_jumps bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_register_jump_at timestamptz,
    ADD COLUMN superseded_at timestamptz,
    ADD COLUMN superseded_register double precision;

-- Which of a batch's devices report registers: empty (and free to probe)
-- for fleets that send interval readings only.
CREATE INDEX vehicles_current_reporting_registers ON vehicles_current (vehicle_id) WHERE reports_registers;
CREATE INDEX meters_current_reporting_registers ON meters_current (meter_id) WHERE reports_registers;
