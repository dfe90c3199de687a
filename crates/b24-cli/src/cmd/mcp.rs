//! `b24 mcp`: serve b24 as an MCP server over stdio (default) or Streamable HTTP (`--http`),
//! and manage the bearer tokens of HTTP clients (`b24 mcp token ...`). See `crate::mcp`.
//!
//! stdout carries JSON-RPC only in stdio mode; logs go to stderr. The global policy flags apply
//! to every tool (`b24 mcp --read-only`, `--allow 'crm.*'`, `--require-plan`, ...), on top of
//! the operator's policy files; over HTTP each client's policy file narrows them further. Every
//! tool goes through the same gate as the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use b24_guard::clients::{TokenError, TokenStore};
use serde_json::json;

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  b24 mcp                              # for an MCP client's stdio server entry
  b24 mcp --read-only                  # only reads, whatever the model asks
  b24 mcp --require-plan --packs core  # writes only via b24_plan -> b24_apply
  b24 mcp token add crm-bot --policy ./crm-bot.toml   # prints the token once
  b24 mcp --http 127.0.0.1:8787        # Streamable HTTP at http://127.0.0.1:8787/mcp
  b24 mcp --http 0.0.0.0:8443 --allowed-host mcp.example.com \\
      --tls-cert cert.pem --tls-key key.pem

Client config (e.g. Claude Code): claude mcp add b24 -- b24 mcp
  over HTTP: claude mcp add --transport http b24 http://127.0.0.1:8787/mcp \\
      --header \"Authorization: Bearer $B24_MCP_TOKEN\""
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<McpCommand>,
    /// Never ask the person to confirm destructive calls through the client (elicitation);
    /// such calls then need confirm_destructive: true in the tool arguments.
    #[arg(long)]
    pub no_elicitation: bool,
    /// Serve Streamable HTTP on this address (IP:PORT; the endpoint is /mcp) instead of stdio.
    /// Every request needs a bearer token from `b24 mcp token add`. Loopback unless TLS.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address because a proxy in front terminates TLS.
    #[arg(long, requires = "http", conflicts_with = "tls_cert")]
    pub behind_tls_proxy: bool,
    /// A Host header value clients use (besides loopback names and the bound address), e.g.
    /// mcp.example.com or mcp.example.com:8443. Repeatable. Protects against DNS rebinding.
    #[arg(long = "allowed-host", value_name = "HOST", requires = "http")]
    pub allowed_hosts: Vec<String>,
    /// A browser Origin allowed to call (e.g. http://localhost:6274). Repeatable. Requests with
    /// any other Origin get 403; requests without one (agent hosts) are not affected.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", requires = "http")]
    pub allowed_origins: Vec<String>,
    /// Live HTTP sessions of all clients together; a new session beyond it gets 429 (no live
    /// session is closed to make room).
    #[arg(long, value_name = "N", requires = "http",
          default_value_t = crate::mcp::http::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Live HTTP sessions one client token may hold; a new session beyond it gets 429.
    #[arg(long, value_name = "N", requires = "http",
          default_value_t = crate::mcp::http::DEFAULT_MAX_SESSIONS_PER_CLIENT)]
    pub max_sessions_per_client: usize,
    /// Close an HTTP session after this many seconds without a request (it then stops counting
    /// towards the caps).
    #[arg(long, value_name = "SECS", requires = "http",
          default_value_t = crate::mcp::http::DEFAULT_SESSION_IDLE.as_secs())]
    pub session_idle_secs: u64,
}

#[derive(Debug, clap::Subcommand)]
pub enum McpCommand {
    /// Bearer tokens for `b24 mcp --http` clients: each with its own policy, audit name and
    /// write budget.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 mcp token add reader --policy /etc/b24/clients/reader.toml   # prints the token once
  b24 mcp token list
  b24 mcp token revoke reader

The tokens live in the guard store of the operator's guard dir (only their SHA-256), or in the
PostgreSQL database when B24_STORE_URL=postgres://… (shared by every host), the same place
`b24 mcp --http` reads on every request: adding or revoking needs no restart.")]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a new client; the token is printed once (only its hash is kept).
    #[command(after_help = "Example:
  printf 'read_only = true\\n' > reader.toml
  b24 mcp token add reader --policy reader.toml   # {\"name\": \"reader\", \"token\": \"b24mcp_…\", ...}")]
    Add {
        /// The client's name: its identity in the audit log (a-z, 0-9, '.', '_', '-').
        name: String,
        /// The client's policy file (policy.toml format). It can only narrow the operator's
        /// policy; it is read again at every call, and if it goes missing the client's calls
        /// are refused.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
    },
    /// List clients (names, policy files, dates; never tokens).
    #[command(after_help = "Example:
  b24 mcp token list   # [{\"name\": \"reader\", \"active\": true, ...}]")]
    List,
    /// Revoke a client's token; its next request gets 401.
    #[command(after_help = "Example:
  b24 mcp token revoke reader   # the name is not reused afterwards")]
    Revoke {
        /// The client's name.
        name: String,
    },
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    if let Some(McpCommand::Token(t)) = args.command {
        return token(t.command, g).await;
    }
    let elicit = !args.no_elicitation;
    match args.http {
        None => crate::mcp::serve(g, elicit).await?,
        Some(addr) => {
            let opts = crate::mcp::http::HttpOptions {
                addr,
                tls: args.tls_cert.zip(args.tls_key),
                behind_tls_proxy: args.behind_tls_proxy,
                allowed_hosts: args.allowed_hosts,
                allowed_origins: args.allowed_origins,
                max_sessions: args.max_sessions,
                max_sessions_per_client: args.max_sessions_per_client,
                session_idle: std::time::Duration::from_secs(args.session_idle_secs),
            };
            crate::mcp::http::serve(g, elicit, opts, crate::cmd::events::shutdown_token()).await?;
        }
    }
    Ok(exit::OK)
}

fn token_error(e: TokenError) -> anyhow::Error {
    let code = match e {
        TokenError::Store(_) => exit::INTERNAL,
        _ => exit::USAGE,
    };
    Exit::new(code, e.to_string())
}

/// The client-token store: the cluster's PostgreSQL database when `B24_STORE_URL` names one
/// (every `b24 mcp --http` host sharing it sees the same tokens and revocations), otherwise the
/// guard dir of the operator's policy. `b24 mcp --http` opens it the same way.
pub async fn token_store(g: &Globals) -> anyhow::Result<TokenStore> {
    let guard_dir = crate::exec::resolve(g)?.guard_dir;
    let url = g.lookup()?("B24_STORE_URL");
    TokenStore::open_for(&guard_dir, url.as_deref())
        .await
        .map_err(|e| Exit::new(exit::INTERNAL, e.to_string()))
}

async fn token(cmd: TokenCommand, g: &Globals) -> anyhow::Result<i32> {
    let store = token_store(g).await?;
    let out = match cmd {
        TokenCommand::Add { name, policy } => {
            let issued = store.add(&name, &policy).await.map_err(token_error)?;
            crate::errln!(
                "b24: the token for {name:?} is shown once; store it in the client's secret store (only its hash is kept)"
            );
            if store.is_shared() {
                crate::errln!(
                    "b24: the token is in the shared PostgreSQL store: every b24 mcp --http host using it accepts the token, and reads the policy file at {} on its own disk",
                    std::path::absolute(&policy)
                        .unwrap_or_else(|_| policy.clone())
                        .display()
                );
            }
            json!({"name": issued.name, "token": issued.token, "policy": std::path::absolute(&policy).unwrap_or(policy)})
        }
        TokenCommand::List => {
            let list = store
                .list()
                .await
                .map_err(|e| Exit::new(exit::INTERNAL, e.to_string()))?;
            let ts = |t: f64| {
                jiff::Timestamp::from_second(t as i64)
                    .map(|x| x.to_string())
                    .unwrap_or_default()
            };
            let rows: Vec<_> = list
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "policy": t.policy,
                        "created_at": ts(t.created_at),
                        "revoked_at": t.revoked_at.map(ts),
                        "active": t.revoked_at.is_none(),
                    })
                })
                .collect();
            json!(rows)
        }
        TokenCommand::Revoke { name } => {
            let now = store.revoke(&name).await.map_err(token_error)?;
            json!({"name": name, "revoked": true, "already_revoked": !now})
        }
    };
    crate::outln!("{}", serde_json::to_string_pretty(&out)?)?;
    Ok(exit::OK)
}
