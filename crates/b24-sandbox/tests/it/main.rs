//! Conformance of the sandbox with docs/protocol.md, checked with a plain HTTP client
//! (never the b24 client, so a shared misunderstanding cannot hide).

// Tests and benches build their own reqwest clients; their set-up installs the TLS provider
// (the workspace clippy.toml forbids that in library code only).
#![allow(clippy::disallowed_methods)]

mod conformance;
mod fidelity;
mod portals;
mod reference_data;
mod support;
