//! What runs for each event: an external command (`--exec`), an HTTP endpoint (`--forward`),
//! or, for library users and benchmarks, an async function in the same process. All get the
//! event's idempotency key so their own side effects can be made idempotent: a worker killed
//! after the handler ran but before the queue recorded it will run it again.
//!
//! Every kind has a timeout, and the timeout covers everything the handler does: for a
//! command that includes taking its stdin, so a command that never reads a large payload
//! cannot hold its slot for ever.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::queue::Job;

pub mod env;
mod exec;

/// How long an in-process handler may run unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a command's stderr is kept (its tail) for the error it fails with. The rest is
/// read and dropped, so a handler that writes gigabytes of stderr costs no memory.
pub const STDERR_TAIL: usize = 16 * 1024;

/// A handler for queued events.
#[derive(Debug, Clone)]
pub enum Handler {
    /// `sh -c CMD` in its own process group, event JSON on stdin,
    /// `B24_EVENT_KEY`/`B24_EVENT_NAME`/`B24_EVENT_ID` in env; exit 0 = done. On timeout the
    /// whole group is killed (the shell and whatever it started). The environment is the
    /// worker's without b24's variables and without anything that looks like a credential
    /// ([`mod@env`]), plus the variables named in `pass_env` ([`Handler::pass_env`]).
    Exec {
        cmd: String,
        timeout: Duration,
        pass_env: Vec<String>,
    },
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

/// An in-process handler function (cheap to clone) and its timeout: a future still running
/// at the timeout is dropped and the attempt fails.
#[derive(Clone)]
pub struct InProcess {
    pub f: Arc<HandlerFn>,
    pub timeout: Duration,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InProcess(timeout {:?})", self.timeout)
    }
}

/// Replace every OAuth token this process holds (`b24::auth::live_secrets`) in a failure's
/// text with `[redacted]`.
///
/// The text (a command's stderr tail, an endpoint's answer) is kept in the queue as the job's
/// last error and shown later by `b24 dlq`, in another process that does not know the
/// tokens this worker refreshed meanwhile, so its redactor could not find them there. Each
/// token is looked up by its first 8 bytes in a set of the text's 8-byte windows, so a fleet's
/// thousands of tokens cost one pass over the text, not one per token. Shorter tokens are
/// not looked for (OAuth tokens are far longer).
pub fn scrub(text: String) -> String {
    const W: usize = 8;
    let secrets = b24::auth::live_secrets();
    if secrets.is_empty() || text.len() < W {
        return text;
    }
    let found: Vec<String> = {
        let windows: std::collections::HashSet<&[u8]> = text.as_bytes().windows(W).collect();
        secrets
            .iter()
            .filter(|s| s.len() >= W && windows.contains(&s.as_bytes()[..W]))
            .filter(|s| text.contains(s.as_str()))
            .cloned()
            .collect()
    };
    let mut text = text;
    for s in found {
        text = text.replace(&s, "[redacted]");
    }
    text
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
            pass_env: Vec::new(),
        }
    }

    /// An `--exec` handler that also gets these variables of the worker's environment, which
    /// it would not otherwise ([`mod@env`]: every `B24_*` and whatever looks like a credential).
    /// One name each, as the operator chose them (`b24 worker --handler-env NAME`); other
    /// kinds of handler have no environment and ignore it.
    pub fn pass_env(mut self, names: impl IntoIterator<Item = String>) -> Handler {
        if let Handler::Exec { pass_env, .. } = &mut self {
            pass_env.extend(names);
        }
        self
    }

    #[allow(clippy::disallowed_methods)] // the provider is installed first
    pub fn forward(url: impl Into<String>, timeout: Duration) -> Handler {
        // reqwest has no TLS provider of its own in this build: without a default it panics.
        b24::tls::install_default_provider();
        Handler::Forward {
            url: url.into(),
            timeout,
            client: reqwest::Client::new(),
        }
    }

    /// Run an async function in this process for each job, e.g. a no-op that measures the
    /// queue alone: `Handler::in_process(|_job| async { Ok(()) })`. It times out after
    /// [`DEFAULT_TIMEOUT`]; change that with [`Handler::with_timeout`].
    pub fn in_process<F, Fut>(f: F) -> Handler
    where
        F: Fn(&Job) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        Handler::InProcess(InProcess {
            f: Arc::new(move |job: &Job| {
                Box::pin(f(job)) as BoxFuture<'static, Result<(), String>>
            }),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same handler with another timeout.
    pub fn with_timeout(mut self, t: Duration) -> Handler {
        match &mut self {
            Handler::Exec { timeout, .. } | Handler::Forward { timeout, .. } => *timeout = t,
            Handler::InProcess(p) => p.timeout = t,
        }
        self
    }

    /// The longest one run may take.
    pub fn timeout(&self) -> Duration {
        match self {
            Handler::Exec { timeout, .. } | Handler::Forward { timeout, .. } => *timeout,
            Handler::InProcess(p) => p.timeout,
        }
    }

    /// Run for one job: `Ok(())` = done, `Err(reason)` = failed (retried later). A reason
    /// that quotes an OAuth token this process holds has it replaced (see [`scrub`]).
    pub async fn run(&self, job: &Job) -> Result<(), String> {
        self.run_raw(job).await.map_err(scrub)
    }

    async fn run_raw(&self, job: &Job) -> Result<(), String> {
        match self {
            Handler::InProcess(p) => match tokio::time::timeout(p.timeout, (p.f)(job)).await {
                Ok(r) => r,
                Err(_) => Err(format!("handler timed out after {:?}", p.timeout)),
            },
            Handler::Exec {
                cmd,
                timeout,
                pass_env,
            } => exec::run(cmd, *timeout, pass_env, job).await,
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
