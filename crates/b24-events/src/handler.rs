//! What runs for each event: an external command (`--exec`), an HTTP endpoint (`--forward`),
//! or, for library users and benchmarks, an async function in the same process. All get the
//! event's idempotency key so their own side effects can be made idempotent: a worker killed
//! after the handler ran but before the queue recorded it will run it again.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use crate::queue::Job;

/// A handler for queued events.
#[derive(Debug, Clone)]
pub enum Handler {
    /// `sh -c CMD`, event JSON on stdin, `B24_EVENT_KEY`/`B24_EVENT_NAME`/`B24_EVENT_ID` in env;
    /// exit 0 = done.
    Exec { cmd: String, timeout: Duration },
    /// HTTP POST of the event JSON (header `X-B24-Event-Key`); 2xx = done.
    Forward {
        url: String,
        timeout: Duration,
        client: reqwest::Client,
    },
    /// An async function in this process (library users, benchmarks); `Ok(())` = done. See
    /// [`Handler::in_process`].
    InProcess(InProcess),
}

/// The function behind [`Handler::InProcess`]. It gets the job by reference and returns a
/// future that owns what it needs (clone from the job what the work uses).
pub type HandlerFn = dyn Fn(&Job) -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// An in-process handler function (cheap to clone).
#[derive(Clone)]
pub struct InProcess(pub Arc<HandlerFn>);

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess(..)")
    }
}

/// The JSON a handler receives.
pub fn event_json(job: &Job) -> serde_json::Value {
    serde_json::json!({"key": job.key, "event": job.name, "attempt": job.attempts, "payload": job.payload})
}

impl Handler {
    pub fn exec(cmd: impl Into<String>, timeout: Duration) -> Handler {
        Handler::Exec {
            cmd: cmd.into(),
            timeout,
        }
    }

    pub fn forward(url: impl Into<String>, timeout: Duration) -> Handler {
        Handler::Forward {
            url: url.into(),
            timeout,
            client: reqwest::Client::new(),
        }
    }

    /// Run an async function in this process for each job, e.g. a no-op that measures the
    /// queue alone: `Handler::in_process(|_job| async { Ok(()) })`.
    pub fn in_process<F, Fut>(f: F) -> Handler
    where
        F: Fn(&Job) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        Handler::InProcess(InProcess(Arc::new(move |job: &Job| {
            Box::pin(f(job)) as BoxFuture<'static, Result<(), String>>
        })))
    }

    /// Run for one job: `Ok(())` = done, `Err(reason)` = failed (retried later).
    pub async fn run(&self, job: &Job) -> Result<(), String> {
        match self {
            Handler::InProcess(InProcess(f)) => f(job).await,
            Handler::Exec { cmd, timeout } => {
                let body = event_json(job).to_string();
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("B24_EVENT_KEY", &job.key)
                    .env("B24_EVENT_NAME", &job.name)
                    .env("B24_EVENT_ID", job.id.to_string())
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start handler: {e}"))?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(body.as_bytes()).await;
                }
                match tokio::time::timeout(*timeout, child.wait_with_output()).await {
                    Err(_) => Err(format!("handler timed out after {:?}", timeout)),
                    Ok(Err(e)) => Err(format!("handler failed: {e}")),
                    Ok(Ok(out)) if out.status.success() => Ok(()),
                    Ok(Ok(out)) => {
                        let err = String::from_utf8_lossy(&out.stderr);
                        let tail: String = err
                            .chars()
                            .rev()
                            .take(300)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        Err(format!(
                            "handler exited with {}: {}",
                            out.status,
                            tail.trim()
                        ))
                    }
                }
            }
            Handler::Forward {
                url,
                timeout,
                client,
            } => {
                let body = event_json(job).to_string();
                let r = client
                    .post(url)
                    .timeout(*timeout)
                    .header("content-type", "application/json")
                    .header("x-b24-event-key", &job.key)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("forward failed: {}", e.without_url()))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("forward answered HTTP {}", r.status()))
                }
            }
        }
    }
}
