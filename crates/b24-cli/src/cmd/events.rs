//! `b24 events`: bind, unbind and list handlers; serve the online receiver.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use crate::exec::{self, CallSpec, ExecOutcome};
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 events bind ONCRMDEALUPDATE --offline
  b24 events bind ONCRMLEADADD --handler https://hooks.example.com/b24
  b24 events list
  b24 events serve --listen 0.0.0.0:8080      # receiver: verifies, commits to the queue, then 200")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Subscribe to an event (app auth only; `--offline` needs an administrator).
    #[command(after_help = "Example:\n  b24 events bind ONCRMDEALUPDATE --offline")]
    Bind(BindArgs),
    /// Remove a subscription.
    #[command(after_help = "Example:\n  b24 events unbind ONCRMDEALUPDATE --offline")]
    Unbind(BindArgs),
    /// List the app's subscriptions (`event.get`).
    #[command(after_help = "Example:\n  b24 events list")]
    List,
    /// Run the online receiver.
    #[command(after_help = "Example:\n  b24 events serve --listen 0.0.0.0:8080")]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// Event name, e.g. ONCRMDEALUPDATE.
    pub event: String,
    /// Handler URL (online events).
    #[arg(long)]
    pub handler: Option<String>,
    /// Offline event (queued on the portal; pulled by `b24 worker`).
    #[arg(long)]
    pub offline: bool,
    /// User whose tokens the handler receives.
    #[arg(long)]
    pub auth_type: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Queue store: a SQLite path (default: queue.db in the state dir) or postgres://…
    #[arg(long, env = "B24_STORE_URL")]
    pub store: Option<String>,
    /// Largest accepted body, bytes (bigger → 413).
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_body: usize,
    /// Pin the application token (otherwise learned from ONAPPINSTALL, rotated by ONAPPUPDATE).
    #[arg(long, env = "B24_APPLICATION_TOKEN", hide_env_values = true)]
    pub application_token: Option<String>,
}

/// The queue store from `--store` / `B24_STORE_URL`, defaulting to the state dir.
pub async fn open_store(g: &Globals, url: Option<&str>) -> anyhow::Result<b24_events::Store> {
    let url = match url {
        Some(u) => u.to_string(),
        None => {
            let dir = g.state_dir();
            b24::auth::ensure_private_dir(&dir)
                .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
            dir.join("queue.db").display().to_string()
        }
    };
    b24_events::Store::open(&url)
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))
}

async fn call(
    g: &Globals,
    method: &str,
    params: serde_json::Value,
    write: bool,
) -> anyhow::Result<serde_json::Value> {
    let spec = CallSpec {
        method: method.into(),
        params,
        confirm_write: write,
        ..Default::default()
    };
    match exec::execute(g, spec).await? {
        ExecOutcome::Done { response, .. } => Ok(response.result),
        ExecOutcome::DryRun(v) => Ok(v),
    }
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    match args.cmd {
        Sub::Bind(b) | Sub::Unbind(b) if b.handler.is_none() && !b.offline => Err(Exit::new(
            exit::USAGE,
            format!(
                "{}: give --handler URL for an online event, or --offline",
                b.event
            ),
        )),
        Sub::Bind(b) => {
            let mut p = json!({"event": b.event.to_ascii_uppercase()});
            if b.offline {
                p["event_type"] = json!("offline");
            }
            if let Some(h) = b.handler {
                p["handler"] = json!(h);
            }
            if let Some(a) = b.auth_type {
                p["auth_type"] = json!(a);
            }
            // Binding is an explicit request: it counts as the write confirmation.
            println!("{}", call(g, "event.bind", p, true).await?);
            Ok(exit::OK)
        }
        Sub::Unbind(b) => {
            let mut p = json!({"event": b.event.to_ascii_uppercase(), "handler": b.handler.unwrap_or_default()});
            if b.offline {
                p["event_type"] = json!("offline");
            }
            println!("{}", call(g, "event.unbind", p, true).await?);
            Ok(exit::OK)
        }
        Sub::List => {
            println!(
                "{}",
                serde_json::to_string_pretty(&call(g, "event.get", json!({}), false).await?)?
            );
            Ok(exit::OK)
        }
        Sub::Serve(s) => {
            let store = open_store(g, s.store.as_deref()).await?;
            let app = b24_events::receiver::router(
                store,
                b24_events::receiver::ReceiverConfig {
                    max_body: s.max_body,
                    pinned_token: s.application_token,
                },
            );
            let listener = tokio::net::TcpListener::bind(s.listen)
                .await
                .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", s.listen)))?;
            let addr = listener.local_addr()?;
            println!("{}", json!({"listening": format!("http://{addr}/")}));
            use std::io::Write;
            std::io::stdout().flush()?;
            let stop = shutdown_token();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await?;
            Ok(exit::OK)
        }
    }
}

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let t = tokio_util::sync::CancellationToken::new();
    let t2 = t.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        t2.cancel();
    });
    let _ = Arc::new(());
    t
}
