//! One conformance suite for both queue backends, plus receiver and worker tests.

// Tests and benches build their own reqwest clients; their set-up installs the TLS provider
// (the workspace clippy.toml forbids that in library code only).
#![allow(clippy::disallowed_methods)]

mod conformance;
mod fair;
mod fleet_pool;
mod form_fuzz;
mod handler_env;
mod handlers;
mod hostile;
mod idle_polls;
mod metrics;
mod pg_pool;
mod pinned_wake;
mod polling;
mod portals;
mod receiver;
mod refresh_lock;
mod refused;
mod skew;
mod uninstalled;
mod wakeups;
mod worker;
