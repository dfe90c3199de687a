//! Exit codes (DESIGN.md, README "Exit codes").
//!
//! 0 ok; 1 done with partial failures; 2 usage or configuration; 3 API error (permanent);
//! 4 refused by policy; 5 authentication; 6 transient failure after retries;
//! 7 outcome unknown (a write may have happened); 8 internal or local-state failure (a
//! database that is down, a full disk, a crashed task, a panic: not the caller's input, not
//! the portal's answer); 130 interrupted.
//!
//! Only the caller's own input maps to 2: an error nobody classified is 8, so that a script
//! never reads "you typed it wrong" for a failure it could not have prevented.
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
/// Internal or local-state failure (database, disk, a crashed task); retrying later may help.
pub const INTERNAL: i32 = 8;
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
        ErrorClass::Internal => INTERNAL,
        _ => INTERNAL,
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
        // Text the caller handed us (params, a plan file) that does not parse.
        if cause.is::<serde_json::Error>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return code_for_io(e);
        }
    }
    INTERNAL
}

/// An error as one line for a person: `outer: inner: …`, ending at the first b24 error whose
/// own message already names its cause (every variant but `State`, whose message is only the
/// context). The transport or JSON errors b24 keeps below it as `source` are for programs and
/// logs: printed, they would repeat the cause as four more levels of reqwest and hyper, and
/// the text would change with those crates' wording. Every place the CLI shows an error
/// (main, doctor, MCP) prints it with this, not with `{e:#}`.
pub fn chain_text(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        // A message that already carries its causes' words (b24's PostgreSQL errors) is not
        // followed by them again.
        let text = cause.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(e) = cause.downcast_ref::<Error>()
            && !matches!(e, Error::State { .. })
        {
            break;
        }
    }
    parts.join(": ")
}

/// A file the caller named that is missing or unreadable is their input; a disk that is full
/// or failing is not.
fn code_for_io(e: &std::io::Error) -> i32 {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound | K::PermissionDenied | K::InvalidInput | K::InvalidData | K::IsADirectory => {
            USAGE
        }
        _ => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_unclassified_errors_are_not_usage() {
        let state = Error::state(
            "limiter store",
            std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full"),
        );
        assert_eq!(code_for_b24(&state), INTERNAL);
        assert_eq!(code_for(&anyhow::Error::new(state)), INTERNAL);
        assert_eq!(code_for(&anyhow::anyhow!("something odd")), INTERNAL);
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space");
        assert_eq!(code_for(&anyhow::Error::new(full)), INTERNAL);
    }

    #[test]
    fn caller_input_is_usage() {
        assert_eq!(code_for(&Exit::new(USAGE, "bad flag")), USAGE);
        assert_eq!(
            code_for_b24(&Error::Config("B24_TIMEOUT_SECS".into())),
            USAGE
        );
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(code_for(&anyhow::Error::new(json)), USAGE);
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "params.json");
        assert_eq!(
            code_for(&anyhow::Error::new(missing).context("reading --params")),
            USAGE
        );
    }

    #[test]
    fn portal_answers_keep_their_codes() {
        let api = |code: &str| Error::Api(b24::ApiError::new("m", code, "", 400));
        assert_eq!(code_for_b24(&api("ACCESS_DENIED")), API);
        assert_eq!(code_for_b24(&api("invalid_grant")), AUTH);
        assert_eq!(code_for_b24(&api("QUERY_LIMIT_EXCEEDED")), TRANSIENT);
        let redirect = Error::Redirect {
            method: "m".into(),
            status: 301,
            location: "https://elsewhere/…".into(),
            reason: "another origin".into(),
        };
        assert_eq!(code_for_b24(&redirect), API);
    }

    #[test]
    fn chain_text_stops_at_the_b24_error_that_names_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let transient = Error::Transient {
            method: "crm.lead.list".into(),
            reason: "connection reset".into(),
            attempts: 3,
            source: Some(Box::new(io)),
        };
        let err = anyhow::Error::new(transient).context("doctor: clock");
        assert_eq!(
            chain_text(&err),
            "doctor: clock: crm.lead.list: connection reset (after 3 attempts)",
            "the transport error below it is not repeated"
        );
        assert!(format!("{err:#}").ends_with("reset by peer"));
        // `State` only names the context: its source is the cause and is kept.
        let state = Error::state(
            "limiter store",
            std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full"),
        );
        assert_eq!(
            chain_text(&anyhow::Error::new(state)),
            "state: limiter store: disk full"
        );
        assert_eq!(
            chain_text(&anyhow::anyhow!("inner").context("outer")),
            "outer: inner"
        );
    }
}
