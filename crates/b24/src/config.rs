//! Resolved configuration: portal, credentials, limits, state dir.

use std::path::PathBuf;

/// A validated configuration. Built once (flags > env > profile file > defaults).
#[derive(Debug, Clone)]
pub struct Config {
    /// Portal host (and port), e.g. `example.bitrix24.com` or `127.0.0.1:8080`.
    pub portal: String,
    /// Directory for tokens, limiter state, plans, idempotency records and the audit log.
    pub state_dir: PathBuf,
}
