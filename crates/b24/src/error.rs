//! One structured error type for everything the client can fail with.
//!
//! Variants that wrap a lower-level failure (I/O, SQLite, PostgreSQL, JSON, a task that
//! panicked) keep it as their [`std::error::Error::source`], so a caller can walk the chain
//! and a log shows the real cause.

/// A lower-level error kept as the cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error the portal (or the OAuth server) answered with. Outside this crate, build one
/// with [`ApiError::new`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ApiError {
    /// The `error` code as sent (may be empty, lower-case or numeric).
    pub code: String,
    /// The `error_description`, possibly empty.
    pub description: String,
    /// The HTTP status it came with; 0 when a command inside a batch failed (the batch
    /// request itself answered 200, so its status says nothing about the command).
    pub http_status: u16,
    /// The method called.
    pub method: String,
}

/// What a caller should do about an error (docs/protocol.md §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Never executed by the portal; safe to retry after backing off (`QUERY_LIMIT_EXCEEDED`).
    RetrySafe,
    /// Wait until `operating_reset_at` for this method (`OPERATION_TIME_LIMIT`).
    WaitForReset,
    /// Refresh the OAuth token once, then retry (`expired_token`).
    RefreshThenRetry,
    /// Credentials are bad: re-authorize or reinstall.
    Reauthorize,
    /// Fix the request or the configuration; retrying will not help.
    Permanent,
    /// The portal is stopped for everyone; alert a human.
    PortalStop,
    /// A write may or may not have happened.
    OutcomeUnknown,
    /// A transient failure (network, 5xx) that persisted through all retries.
    Transient,
    /// Bad configuration or usage on our side.
    Usage,
    /// Local state failed (database down, disk full, a worker task crashed): neither the
    /// caller's input nor the portal is at fault; retrying later may help.
    Internal,
}

/// Every way a call can fail.
///
/// New variants may come (`#[non_exhaustive]`); the fields of each variant are its public
/// contract, so a caller can rebuild one (the gate adds what settling found to an
/// `OutcomeUnknown`'s reason and keeps its `source`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{method}: {code}: {description} ({place})", method = .0.method, code = if .0.code.is_empty() { "<empty code>" } else { .0.code.as_str() }, description = .0.description, place = .0.place())]
    /// The portal refused the call with an error code (see [`ApiError::class`]).
    Api(ApiError),
    /// A write whose outcome is unknown (timeout, reset, body-less 5xx). It was NOT resent.
    #[error(
        "{method}: outcome unknown, the write may or may not have happened ({reason}); it was not resent blindly"
    )]
    OutcomeUnknown {
        /// The method called.
        method: String,
        /// What went wrong (timeout, reset, a 5xx without an error body).
        reason: String,
        /// The idempotency key sent, so that a REST 3.0 call can be resent safely.
        idempotency_key: Option<String>,
        /// The transport error behind it (URL stripped), when there is one; `None` for a
        /// body-less 5xx, which is an answer rather than an error.
        #[source]
        source: Option<BoxError>,
    },
    /// Transport failure that persisted after every allowed retry.
    #[error("{method}: {reason} (after {attempts} attempts)")]
    Transient {
        /// The method called.
        method: String,
        /// The last failure.
        reason: String,
        /// Attempts made, the first included.
        attempts: u32,
        /// The last transport error (URL stripped), when the last failure was one; `None`
        /// when it was an answer (a 5xx, `QUERY_LIMIT_EXCEEDED`) or the limiter's queue.
        #[source]
        source: Option<BoxError>,
    },
    #[error("configuration: {0}")]
    /// Bad configuration or usage: the caller's input must change.
    Config(String),
    /// Credentials are missing, expired for good or refused.
    #[error("authentication: {reason}")]
    Auth {
        /// What is wrong and what to do about it.
        reason: String,
        /// The underlying failure (the token endpoint's transport error with its URL
        /// stripped, an undecodable body, the portal's refusal), when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The answer (or an item of it) did not have the expected shape.
    #[error("{method}: could not decode the response: {reason}")]
    Decode {
        /// The method called (or what was decoded).
        method: String,
        /// What did not fit, with the JSON path where it could be told.
        reason: String,
        /// The JSON error behind it, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Local state could not be read or written (limiter, token store, checkpoint), or an
    /// internal task failed. `source` is the underlying I/O, SQLite or PostgreSQL error.
    #[error("state: {context}")]
    State {
        /// What was being done, e.g. `limiter store /path/limiter.db`.
        context: String,
        /// The underlying failure, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The portal answered with a redirect that was not followed: to another origin, a
    /// downgrade from https to http, or too many hops. Nothing was sent to the new location.
    #[error(
        "{method}: the portal redirected (HTTP {status}) to {location}, which is not followed: {reason}; \
         nothing was sent there (if the portal moved, update its address)"
    )]
    Redirect {
        /// The method being called.
        method: String,
        /// The redirect status (301, 302, 303, 307 or 308).
        status: u16,
        /// The new location, reduced to scheme, host and port (the path may hold a secret).
        location: String,
        /// Why it was not followed.
        reason: String,
    },
}

impl Error {
    /// A state error with its cause.
    pub fn state(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::State {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// An authentication error without an underlying cause (nothing stored, a refusal
    /// decided here).
    pub fn auth(reason: impl Into<String>) -> Error {
        Error::Auth {
            reason: reason.into(),
            source: None,
        }
    }

    /// An authentication error with its cause (a transport or decoding error); the cause
    /// must not carry a secret (strip a reqwest error's URL with `without_url` first).
    pub fn auth_with(reason: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Auth {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// A state error without an underlying cause (an invariant of stored state broke).
    pub fn state_msg(context: impl Into<String>) -> Error {
        Error::State {
            context: context.into(),
            source: None,
        }
    }
}

impl Error {
    /// How to react to this error (docs/protocol.md §8.3).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Api(api) => api.class(),
            Error::OutcomeUnknown { .. } => ErrorClass::OutcomeUnknown,
            Error::Transient { .. } => ErrorClass::Transient,
            Error::Config(_) => ErrorClass::Usage,
            Error::Auth { .. } => ErrorClass::Reauthorize,
            Error::Decode { .. } => ErrorClass::Transient,
            Error::State { .. } => ErrorClass::Internal,
            Error::Redirect { .. } => ErrorClass::Permanent,
        }
    }
}

impl ApiError {
    /// The error `code` (with its `description`) that `method` was answered with, under HTTP
    /// `http_status` (0 for a command inside a batch).
    pub fn new(
        method: impl Into<String>,
        code: impl Into<String>,
        description: impl Into<String>,
        http_status: u16,
    ) -> ApiError {
        ApiError {
            code: code.into(),
            description: description.into(),
            http_status,
            method: method.into(),
        }
    }

    /// Where the error came from, for messages: `HTTP 404`, or `a command inside a batch`.
    pub fn place(&self) -> String {
        if self.http_status == 0 {
            "a command inside a batch".into()
        } else {
            format!("HTTP {}", self.http_status)
        }
    }

    /// Classify by code (case-insensitive), never by HTTP status alone.
    pub fn class(&self) -> ErrorClass {
        match self.code.to_ascii_uppercase().as_str() {
            "QUERY_LIMIT_EXCEEDED" => ErrorClass::RetrySafe,
            "OPERATION_TIME_LIMIT" => ErrorClass::WaitForReset,
            "EXPIRED_TOKEN" | "INVALID_TOKEN" => ErrorClass::RefreshThenRetry,
            "INVALID_GRANT" | "NO_AUTH_FOUND" | "INVALID_CLIENT" | "PAYMENT_REQUIRED" => {
                ErrorClass::Reauthorize
            }
            "OVERLOAD_LIMIT" | "PORTAL_DELETED" => ErrorClass::PortalStop,
            _ => ErrorClass::Permanent,
        }
    }
}
