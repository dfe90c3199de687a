//! The REST response envelope (v2 `result/next/total/time`, v3 `result` + nested error).

use serde_json::Value;

/// The `time` block that follows every successful response (protocol reference §2.2).
/// Every field is optional: its composition varies by method and environment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Time {
    pub start: Option<f64>,
    pub finish: Option<f64>,
    pub duration: Option<f64>,
    pub processing: Option<f64>,
    pub date_start: Option<String>,
    pub date_finish: Option<String>,
    /// Seconds this method has used for this credential over the last ten minutes.
    pub operating: Option<f64>,
    /// Unix time when the oldest one-minute basket drops out of `operating`.
    pub operating_reset_at: Option<i64>,
}

/// A successful response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The `result` member, whatever its shape.
    pub result: Value,
    /// `next` of list methods: the `start` to send for the next page.
    pub next: Option<u64>,
    /// `total` of list methods.
    pub total: Option<u64>,
    pub time: Option<Time>,
    /// The whole envelope as received (for `--raw`).
    pub raw: Value,
    /// True when a v3 server answered from its idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
}
