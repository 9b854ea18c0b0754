//! `sqlx::migrate!` embeds `migrations/` at build time; without this, cargo
//! would not rebuild this crate when a migration file is added, and an
//! incremental build would run with the previous set of migrations.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
