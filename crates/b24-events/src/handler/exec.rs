//! `--exec` handlers: `sh -c CMD` in a process group of its own.
//!
//! - The payload is written to stdin by a task of its own, under the same timeout as the
//!   run: a command that never reads stdin (and a payload bigger than the pipe buffer) cannot
//!   block the slot before the timeout starts.
//! - stderr is drained as it comes; only its last [`STDERR_TAIL`] bytes are kept.
//! - When the shell exits, or the timeout passes, the whole process group is killed: the
//!   children a handler started (`sleep 1000 &`, a pipeline stage) do not outlive it, and a
//!   timeout stops all of them, not only `sh`.
//! - It does not inherit the worker's environment as is: b24's own variables and anything
//!   that looks like a credential are left out (see [`super::env`]), so a handler that logs
//!   or passes on its environment cannot leak the portal's secrets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{STDERR_TAIL, event_json};
use crate::queue::Job;

/// How long the stderr reader may keep going after the group is gone (a process that left the
/// group, e.g. with `setsid`, may still hold the pipe open).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The last [`STDERR_TAIL`] bytes written to stderr.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
        let over = (self.0.len() + bytes.len()).saturating_sub(STDERR_TAIL);
        self.0.drain(..over);
        self.0.extend(bytes);
    }

    fn text(&self) -> String {
        let (a, b) = self.0.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

/// SIGKILL to every process of the group led by `pid`. A group with no members left is not
/// an error (ESRCH).
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    #[cfg(not(unix))]
    let _ = pid;
}

pub(super) async fn run(
    cmd: &str,
    timeout: Duration,
    pass_env: &[String],
    job: &Job,
) -> Result<(), String> {
    let body = event_json(job).to_string().into_bytes();
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        // Fail closed: only what `handler_env` lets through, never the worker's credentials.
        .env_clear()
        .envs(super::env::handler_env(std::env::vars_os(), pass_env))
        .env("B24_EVENT_KEY", &job.key)
        .env("B24_EVENT_NAME", &job.name)
        .env("B24_EVENT_ID", job.id.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start handler: {e}"))?;
    let pid = child.id();
    // Kills the group when the run ends, and also if this future is dropped half-way.
    let group = GroupGuard(pid);

    let feed = child.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            // A handler may exit without reading: a broken pipe here is its business.
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        })
    });
    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut drain = child.stderr.take().map(|mut err| {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&buf[..n]);
            }
        })
    });

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    drop(group);
    if waited.is_err() {
        // Reap the shell (killed with its group above).
        let _ = child.wait().await;
    }
    if let Some(f) = feed {
        f.abort();
    }
    if let Some(d) = drain.as_mut()
        && tokio::time::timeout(DRAIN_GRACE, &mut *d).await.is_err()
    {
        d.abort();
    }
    let stderr = tail.lock().unwrap_or_else(|p| p.into_inner()).text();
    let with_stderr = |msg: String| {
        if stderr.is_empty() {
            msg
        } else {
            format!("{msg}: {stderr}")
        }
    };
    match waited {
        Err(_) => Err(with_stderr(format!(
            "handler timed out after {timeout:?} (its process group was killed)"
        ))),
        Ok(Err(e)) => Err(format!("handler failed: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(with_stderr(format!("handler exited with {status}"))),
    }
}

/// Kills the process group when dropped.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes_only() {
        let mut t = Tail::default();
        for _ in 0..100 {
            t.push(&[b'a'; 1000]);
        }
        t.push(b"end");
        assert_eq!(t.0.len(), STDERR_TAIL);
        assert!(t.text().ends_with("aend"));
        t.push(&vec![b'z'; STDERR_TAIL * 3]);
        assert_eq!(t.0.len(), STDERR_TAIL);
        assert!(t.0.iter().all(|&b| b == b'z'));
    }
}
