//! Exit codes (DESIGN.md, README "Exit codes").
//!
//! 0 ok; 1 done with partial failures; 2 usage or configuration; 3 API error (permanent);
//! 4 refused by policy; 5 authentication; 6 transient failure after retries;
//! 7 outcome unknown (a write may have happened); 130 interrupted.
#![allow(dead_code)] // some codes are used only by commands still being built

use b24::{Error, ErrorClass};

pub const OK: i32 = 0;
pub const PARTIAL: i32 = 1;
pub const USAGE: i32 = 2;
pub const API: i32 = 3;
pub const POLICY: i32 = 4;
pub const AUTH: i32 = 5;
pub const TRANSIENT: i32 = 6;
pub const OUTCOME_UNKNOWN: i32 = 7;
pub const INTERRUPTED: i32 = 130;

/// An error that carries its own exit code (for refusals and usage errors raised by the CLI).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    /// Builds the `anyhow::Error` directly: every caller returns it with `?` or `Err(..)`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code,
            message: message.into(),
        })
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code for a library error.
pub fn code_for_b24(err: &Error) -> i32 {
    match err.class() {
        ErrorClass::OutcomeUnknown => OUTCOME_UNKNOWN,
        ErrorClass::Transient | ErrorClass::RetrySafe | ErrorClass::WaitForReset => TRANSIENT,
        ErrorClass::Reauthorize | ErrorClass::RefreshThenRetry => AUTH,
        ErrorClass::Usage => USAGE,
        ErrorClass::Permanent | ErrorClass::PortalStop => API,
        _ => API,
    }
}

/// The exit code for any error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            return e.code;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return code_for_b24(e);
        }
    }
    USAGE
}
