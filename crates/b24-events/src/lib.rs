//! # b24-events — Bitrix24 events that are never lost and handled once
//!
//! - [`receiver`]: the online endpoint. Bitrix24 never redelivers an online event, so the
//!   receiver checks `application_token` (constant time), commits the event to the queue and
//!   only then answers 200.
//! - [`pull`]: the offline side: `event.offline.get` with `clear=0`, a local commit, and only
//!   then `event.offline.clear` with the `process_id`.
//! - [`queue`]: the durable queue ([`sqlite`] by default, [`postgres`] for many workers) with
//!   leases, a reaper, retries with backoff, a dead-letter table and idempotency records:
//!   completing a job and recording its key happen in one transaction.
//! - [`worker`] and [`handler`]: run `--exec` or `--forward` handlers for queued events (or,
//!   for library users and benchmarks, an in-process async function).
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

pub mod fleet;
pub mod form;
pub mod handler;
pub mod inbox;
pub mod installs;
pub mod listen;
pub mod postgres;
pub mod pull;
pub mod queue;
pub mod receiver;
pub mod sqlite;
pub mod trust;
pub mod worker;

pub use queue::{Job, NewEvent, QueueStats, Store};

/// Errors of the event pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    #[error("queue store: {0}")]
    Store(String),
    #[error("portal: {0}")]
    Portal(#[from] b24::Error),
    #[error("handler: {0}")]
    Handler(String),
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, EventsError>;

pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
