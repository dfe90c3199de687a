//! [`Gate::export`]: stream a whole list, for read-only list methods only.
//!
//! An export runs many requests (batches of list commands) under one decision, so the decision
//! must be narrow: a plain read of a documented method, never `batch` itself, never a method
//! whose risk is unknown. A read-only tool that accepted `batch` would be a write tool that
//! clients auto-approve.

use std::pin::Pin;
use std::time::Instant;

use b24::export::{ExportOptions, Page, pages};
use futures::Stream;
use serde_json::json;

use super::call::strip_credentials;
use super::confirm::Confirmed;
use super::{Gate, GateError};

/// An export as a front end asks for it (`opts.method` as the caller spelled it).
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub opts: ExportOptions,
}

/// The pages of an allowed export; [`ExportEnd::finish`] records how it ended.
pub struct ExportRun<'g> {
    pub pages: Pin<Box<dyn Stream<Item = Result<Page, b24::Error>> + Send>>,
    pub client: b24::Client,
    pub end: ExportEnd<'g>,
}

impl std::fmt::Debug for ExportRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportRun")
            .field("method", &self.end.method)
            .finish_non_exhaustive()
    }
}

/// Records the end of an export in the audit log.
pub struct ExportEnd<'g> {
    /// The normalised method.
    pub method: String,
    client: b24::Client,
    gate: &'g Gate,
    call_id: String,
    started: Instant,
}

impl ExportEnd<'_> {
    /// Record the end of the export (`ok`, `error`, `interrupted`, `closed`) and its size.
    pub fn finish(&self, status: &str, items: u64) -> Result<(), GateError> {
        self.gate.record(
            &self.method,
            vec![
                ("risk", json!("read")),
                ("decision", json!("allow")),
                ("outcome", json!(status)),
                ("items", json!(items)),
                ("requests", json!(self.client.stats().requests)),
                ("call_id", json!(self.call_id)),
                (
                    "duration_ms",
                    json!(self.started.elapsed().as_millis() as u64),
                ),
            ],
        )
    }
}

impl Gate {
    /// Check an export and start it.
    pub async fn export(&self, req: ExportRequest) -> Result<ExportRun<'_>, GateError> {
        let mut opts = req.opts;
        strip_credentials(&mut opts.params);
        let checked = self.prepare(&opts.method, &opts.params)?;
        self.require_reads(&checked, &opts.params)?;
        self.decide(&checked, Confirmed::default(), false, false, &opts.params)?;
        opts.method = checked.method.to_string();
        let client = self.portal.client().await?;
        let call_id = uuid::Uuid::now_v7().simple().to_string();
        self.record(
            checked.method.as_str(),
            vec![
                ("risk", json!("read")),
                ("decision", json!("allow")),
                ("outcome", json!("started")),
                ("call_id", json!(call_id)),
                ("params", self.audit_params(&opts.params)),
            ],
        )?;
        let method = opts.method.clone();
        Ok(ExportRun {
            pages: Box::pin(pages(client.clone(), opts)),
            end: ExportEnd {
                method,
                client: client.clone(),
                gate: self,
                call_id,
                started: Instant::now(),
            },
            client,
        })
    }
}
