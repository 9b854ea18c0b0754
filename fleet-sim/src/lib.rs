//! A fleet simulator: the readings a fleet of electric vehicles and the
//! smart meters of their chargers would send, and the ways to send them.
//!
//! - [`fleet`]: the model. Seeded and deterministic: the same [`FleetSpec`]
//!   yields the same readings, byte for byte.
//! - [`send`]: where readings go (the gateway over HTTP, straight into
//!   Kafka, or an NDJSON file), with progress and a summary.
//!
//! The `fleet-sim` binary puts the two behind a command line; the benchmark
//! harness uses the library to generate its data sets.

pub mod fleet;
pub mod send;
