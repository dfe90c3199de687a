//! # b24-guard — guardrails for Bitrix24 calls made by agents
//!
//! The CLI and the MCP server both run every call through [`gate::Gate`], so the same gates
//! hold whichever front end an agent uses; the front ends only parse arguments and render.
//!
//! - [`gate`]: the guarded path, one entry point per operation (call, batch, plan, apply, export);
//! - [`method`] and [`batch_cmds`]: method names normalised once, and batch commands found in
//!   every spelling the portal accepts;
//! - [`sources`]: where the policy is read from (fixed places the caller cannot redirect);
//! - [`catalog`]: every documented method with its scope, risk class, pack and doc link (data in
//!   `data/catalog.tsv`, generated from the official method list plus reviewed rules and overrides);
//! - [`knowledge`]: each documented method's parameters, result and an example (data in
//!   `data/knowledge.jsonl`, generated from the official documentation repository), for
//!   `describe` and for refusing parameters a method does not take (`strict_params`);
//! - [`policy`]: allow/deny globs, packs, read-only, confirmations, plans-required — with an
//!   operator file the calling agent cannot loosen;
//! - [`store`]: plans (plan → apply exactly once), idempotency records and the write budget,
//!   in one SQLite file (mode 0600) in the state dir;
//! - [`settle`]: how a write whose answer was lost is settled (stamps, look-ups), used by the
//!   gate right after the failure and by `b24 settle` later;
//! - [`audit`]: the append-only, hash-chained JSONL audit log, with secrets redacted.
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

pub mod audit;
pub mod batch_cmds;
pub mod catalog;
pub mod clients;
pub mod fixes;
pub mod gate;
pub mod keys;
pub mod knowledge;
pub mod method;
pub mod policy;
pub mod redact;
pub mod settle;
pub mod sources;
pub mod store;

pub use catalog::{Catalog, MethodInfo, Risk};
pub use policy::{Policy, PolicyFile, Refusal};

/// Errors of the guard's stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("guard store: {0}")]
    Store(String),
    #[error("policy file {path}: {reason}")]
    PolicyFile { path: String, reason: String },
    #[error("audit log {path}: {reason}")]
    Audit { path: String, reason: String },
}
