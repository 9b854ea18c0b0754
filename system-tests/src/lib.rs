//! Nothing but tests: see `tests/`. They run the services' binaries (built
//! by `cargo test --workspace` before any test runs) as child processes.
