//! The b24 binary end to end, one test binary: each module drives `b24` (and `b24 mcp`)
//! against an embedded sandbox portal, in temp dirs.

// The binary may not use `eprintln!`/`println!` or build a reqwest client without the TLS
// provider (crates/b24-cli/clippy.toml); a test may (its set-up installs the provider).
#![allow(clippy::disallowed_macros, clippy::disallowed_methods)]

mod support;

mod attacks;
mod batch_export;
mod call;
mod cluster;
mod describe;
mod dlq_rejected;
mod events;
mod guard;
mod handler_env;
mod hostile_round;
mod mcp;
mod mcp_limits;
mod newcomer;
mod portals;
mod skill;
mod terminal;
mod worker_logs;
