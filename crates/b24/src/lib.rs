//! # b24 — a Bitrix24 REST client that respects the portal's limits
//!
//! The crate is organised one module per concern:
//!
//! - [`config`]: where the portal and the credentials come from (flags > env > profile > defaults);
//! - [`auth`]: incoming webhooks and OAuth 2.0 (refresh single-flight across tasks and processes);
//! - [`envelope`]: the v2/v3 response envelope and its quirks (numbers as strings, `[]` maps);
//! - [`error`]: one structured error type, classified as in docs/protocol.md §8.3;
//! - [`limiter`]: a GCRA model of the portal's leaky bucket, shareable across processes;
//! - [`retry`]: backoff with jitter, and the rule that an ambiguous write is never resent;
//! - [`client`]: [`Client`], which ties the above together for a single call;
//! - [`builder`]: [`ClientBuilder`], a client from values in code rather than `B24_*` variables;
//! - [`batch`] and [`export`]: many commands per request, and streaming export of whole lists.
//!
//! Nothing here prints: the `b24` binary owns stdout and stderr.
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

pub mod auth;
pub mod batch;
pub mod builder;
pub mod client;
pub mod config;
pub mod envelope;
pub mod error;
pub mod export;
pub mod limiter;
pub mod pg;
mod redirect;
pub mod retry;
pub mod tls;

/// The README's example, compiled as a doctest so that it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use builder::ClientBuilder;
pub use client::{CallOptions, Client, ClientStats};
pub use config::Config;
pub use envelope::{Response, Time};
pub use error::{ApiError, Error, ErrorClass};
