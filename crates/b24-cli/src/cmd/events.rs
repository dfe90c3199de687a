//! `b24 events`: bind, unbind and list handlers; serve the online receiver.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use b24_guard::gate::{CallOutcome, CallRequest, NoPerson, Origin};

use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 events bind ONCRMDEALUPDATE --offline
  b24 events bind ONCRMLEADADD --handler https://hooks.example.com/b24
  b24 events list
  b24 events serve --listen 0.0.0.0:8080 --allow-portal '*.bitrix24.com'   # receiver: verifies, commits, then 200")]
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
    #[command(
        after_help = "Example:\n  b24 events serve --listen 0.0.0.0:8080 --allow-portal a223c6b3710f85df22e9377d6c4f7553@portal.bitrix24.com"
    )]
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
    /// Offline queue of this connector (`auth_connector`): writes that carry the same connector
    /// are not queued back to it, so a sync does not loop on its own changes.
    #[arg(long, value_name = "NAME")]
    pub auth_connector: Option<String>,
    /// For `ONOFFLINEEVENT`: at most one notification per this many seconds (`options.minTimeout`;
    /// 0 = one per portal hit).
    #[arg(long, value_name = "SECS")]
    pub min_timeout: Option<u32>,
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
    /// Pin the application token (otherwise learned from a confirmed ONAPPINSTALL, rotated by
    /// a confirmed ONAPPUPDATE).
    #[arg(long, env = "B24_APPLICATION_TOKEN", hide_env_values = true)]
    pub application_token: Option<String>,
    /// A portal whose ONAPPINSTALL may be accepted, once the portal confirms the install's
    /// access token (`app.info`): HOST, *.SUFFIX or MEMBER_ID@HOST. Repeatable. Without any,
    /// only a pinned --application-token is accepted.
    #[arg(
        long = "allow-portal",
        env = "B24_ALLOW_PORTALS",
        value_delimiter = ','
    )]
    pub allow_portals: Vec<b24_events::trust::ApprovedPortal>,
    /// The app's code as `app.info` reports it (a local app's client_id, e.g.
    /// local.5f…): installs of other apps are refused.
    #[arg(long)]
    pub app_code: Option<String>,
    /// Most connections held at once; at the cap the oldest idle one is closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also ends idle keep-alive).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
}

fn secs(v: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(v.clamp(0.1, 86_400.0))
}

/// The queue store URL from `--store` / `B24_STORE_URL`, defaulting to the state dir.
pub(crate) fn store_url(g: &Globals, url: Option<&str>) -> anyhow::Result<String> {
    Ok(match url {
        Some(u) => u.to_string(),
        None => {
            let dir = g.state_dir();
            b24::auth::ensure_private_dir(&dir)
                .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
            dir.join("queue.db").display().to_string()
        }
    })
}

/// The queue store from `--store` / `B24_STORE_URL`, defaulting to the state dir.
pub async fn open_store(g: &Globals, url: Option<&str>) -> anyhow::Result<b24_events::Store> {
    let url = store_url(g, url)?;
    // A misspelt scheme (`postgress://`) is a configuration error, never a SQLite file name.
    b24::config::store_kind(&url).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
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
    let req = CallRequest {
        method: method.into(),
        params,
        confirm_write: write,
        ..Default::default()
    };
    let gate = exec::gate(g, Origin::Cli)?;
    match gate.call(req, &NoPerson).await.map_err(exec::gate_error)? {
        CallOutcome::Done { response, .. } => Ok(response.result),
        CallOutcome::DryRun(v) => Ok(v),
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
            if let Some(c) = b.auth_connector {
                p["auth_connector"] = json!(c);
            }
            if let Some(t) = b.min_timeout {
                if !b.event.eq_ignore_ascii_case("ONOFFLINEEVENT") {
                    return Err(Exit::new(
                        exit::USAGE,
                        format!(
                            "--min-timeout applies to ONOFFLINEEVENT only, not {}",
                            b.event
                        ),
                    ));
                }
                p["options"] = json!({"minTimeout": t});
            }
            // Binding is an explicit request: it counts as the write confirmation.
            crate::outln!("{}", call(g, "event.bind", p, true).await?)?;
            Ok(exit::OK)
        }
        Sub::Unbind(b) => {
            let mut p = json!({"event": b.event.to_ascii_uppercase(), "handler": b.handler.unwrap_or_default()});
            if b.offline {
                p["event_type"] = json!("offline");
            }
            if let Some(c) = b.auth_connector {
                p["auth_connector"] = json!(c);
            }
            crate::outln!("{}", call(g, "event.unbind", p, true).await?)?;
            Ok(exit::OK)
        }
        Sub::List => {
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&call(g, "event.get", json!({}), false).await?)?
            )?;
            Ok(exit::OK)
        }
        Sub::Serve(s) => {
            let url = store_url(g, s.store.as_deref())?;
            if s.application_token.is_none() && s.allow_portals.is_empty() {
                crate::errln!(
                    "b24 events serve: no --allow-portal and no --application-token: every install will be refused"
                );
            }
            let opts = b24_events::receiver::ReceiverOptions {
                trust: b24_events::trust::TrustConfig {
                    portals: s.allow_portals,
                    app_code: s.app_code,
                    // Plain http only to a loopback portal the operator approved (the sandbox).
                    loopback_http: true,
                    ..Default::default()
                },
                ..Default::default()
            };
            let app = b24_events::receiver::open(
                &url,
                b24_events::receiver::ReceiverConfig {
                    max_body: s.max_body,
                    pinned_token: s.application_token,
                },
                opts,
            )
            .await
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(s.listen)
                .await
                .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", s.listen)))?;
            let addr = listener.local_addr()?;
            crate::outln!("{}", json!({"listening": format!("http://{addr}/")}))?;
            use std::io::Write;
            std::io::stdout().flush()?;
            let limits = b24_events::listen::ServeLimits {
                max_connections: s.max_connections.max(1),
                header_timeout: secs(s.header_timeout),
                body_timeout: secs(s.body_timeout),
                ..Default::default()
            };
            b24_events::listen::serve(listener, app, limits, shutdown_token()).await?;
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
