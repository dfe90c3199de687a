//! Shared fixtures for the CLI integration tests: an in-process sandbox portal and a hermetic
//! `b24` command (temp config and state dirs, no `B24_*` variables from the outer environment).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use b24_sandbox::{Sandbox, SandboxConfig};

mod app;
pub use app::app_on;

/// Start an in-process sandbox.
pub async fn sandbox(cfg: SandboxConfig) -> Sandbox {
    // Tests build reqwest and rmcp clients in this process after setting up; see `Env::bare`.
    b24::tls::install_default_provider();
    b24_sandbox::start(cfg).await.expect("sandbox starts")
}

/// A sandbox with `n` seeded leads and default limits.
pub async fn sandbox_with_leads(n: usize) -> Sandbox {
    sandbox(SandboxConfig {
        seed_leads: n,
        ..Default::default()
    })
    .await
}

/// Temp dirs for one test's `b24` invocations.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// Webhook auth against `sb`.
    pub fn webhook(sb: &Sandbox) -> Env {
        let mut e = Env::bare();
        e.set("B24_WEBHOOK_URL", &sb.info().webhook_url);
        e
    }

    /// OAuth auth against `sb` (the preinstalled app's tokens).
    pub fn oauth(sb: &Sandbox) -> Env {
        let i = sb.info();
        let mut e = Env::bare();
        e.set("B24_AUTH_MODE", "oauth");
        e.set("B24_DOMAIN", &i.base_url);
        e.set("B24_CLIENT_ID", &i.client_id);
        e.set("B24_CLIENT_SECRET", &i.client_secret);
        e.set("B24_ACCESS_TOKEN", &i.access_token);
        e.set("B24_REFRESH_TOKEN", &i.refresh_token);
        e.set("B24_OAUTH_TOKEN_URL", &i.oauth_token_url);
        e
    }

    /// No portal configured; only the temp dirs.
    pub fn bare() -> Env {
        // Every test sets up here or in `sandbox` before it builds a reqwest client (its own or
        // rmcp's) in this process, and reqwest has no TLS provider of its own in this
        // workspace: without a process default it panics. So both install ring.
        b24::tls::install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut e = Env {
            dir,
            vars: Vec::new(),
        };
        let (c, s, h) = (e.config_dir(), e.state_dir(), e.dir.path().join("home"));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::create_dir_all(&h).unwrap();
        e.set("B24_CONFIG_DIR", c.to_str().unwrap());
        e.set("B24_STATE_DIR", s.to_str().unwrap());
        e.set("HOME", h.to_str().unwrap());
        e
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(x, _)| x != k);
        self.vars.push((k.to_string(), v.to_string()));
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A `b24` command with only this env's `B24_*` variables.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(b24_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("B24_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Run to completion (off the async runtime's worker threads).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().expect("b24 runs"))
            .await
            .unwrap()
    }

    /// Run with `stdin` as input.
    pub async fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = self.cmd(args);
        let input = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }
}

pub fn b24_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_b24"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Panic if any of `secrets` occurs in `haystack` (named `what`).
pub fn assert_no_secrets(what: &str, haystack: &[u8], secrets: &[String]) {
    let text = String::from_utf8_lossy(haystack);
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(
            !text.contains(s.as_str()),
            "a secret ({}…) appears in {what}",
            &s[..3]
        );
    }
}

/// Count calls of `method` the sandbox answered with any status.
pub fn calls_of(sb: &Sandbox, method: &str) -> u64 {
    sb.stats().methods.get(method).copied().unwrap_or(0)
}

/// A fresh PostgreSQL schema for one test, or None (skipped, and says so); see
/// [`b24_test_support::pg_url`].
pub async fn pg_test_url(test: &str) -> Option<String> {
    b24_test_support::pg_url("cli", test).await
}
