//! `b24 auth`: OAuth login, status and logout.
//!
//! `login` runs the authorization-code flow (docs/protocol.md §3): it prints the portal's
//! authorize URL on stderr, catches the `code` on a loopback callback (checking `state`, so a
//! stray request cannot inject a code), or takes a code pasted with `--code`; exchanges it at the
//! token endpoint; and stores the pair (mode 0600) in the state dir, in the same file the client
//! reads (`Config::token_file`). It never prompts: without a callback or `--code` it fails after
//! `--timeout`. Nothing printed ever contains a token or the client secret.

use std::time::Duration;

use b24::auth::{FileTokenStore, TokenPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 auth login --portal example.bitrix24.com --client-id app.123
  b24 auth status
  b24 auth logout --portal example.bitrix24.com")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Authorize this machine for a portal's app (OAuth authorization code) and store the tokens.
    Login(LoginArgs),
    /// Show the stored tokens' portal, member id, scopes and expiry (never the tokens).
    #[command(after_help = "Example:\n  b24 auth status --portal example.bitrix24.com")]
    Status(PortalArgs),
    /// Delete the stored tokens.
    #[command(after_help = "Example:\n  b24 auth logout --portal example.bitrix24.com")]
    Logout(PortalArgs),
}

/// Which portal and app (flags win over `B24_DOMAIN`, `B24_CLIENT_ID`, `B24_CLIENT_SECRET`).
#[derive(Debug, Clone, clap::Args)]
pub struct PortalArgs {
    /// Portal host (`example.bitrix24.com`, or `http://127.0.0.1:PORT` for the sandbox).
    #[arg(long, value_name = "HOST")]
    pub portal: Option<String>,
    /// The app's client id (B24_CLIENT_ID).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  b24 auth login --portal example.bitrix24.com --client-id app.123 --client-secret \"$SECRET\"
  b24 auth login --no-browser                 # print the URL; paste the code with --code
  b24 auth login --code 5f1e...               # exchange a code you already have

After login, set B24_AUTH_MODE=oauth, B24_DOMAIN, B24_CLIENT_ID and B24_CLIENT_SECRET
(no tokens needed): b24 reads the stored pair and refreshes it itself.")]
pub struct LoginArgs {
    #[command(flatten)]
    pub portal: PortalArgs,
    /// The app's client secret (B24_CLIENT_SECRET; prefer the env var: flags show up in `ps`).
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// An authorization code obtained elsewhere (skips the browser and the callback).
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// Do not open a browser; only print the URL to open.
    #[arg(long)]
    pub no_browser: bool,
    /// Open the URL with this command instead of the system's opener (the URL is appended).
    #[arg(long, value_name = "CMD")]
    pub open_with: Option<String>,
    /// Loopback address for the callback server.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Give up waiting for the callback after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    match args.cmd {
        Sub::Login(a) => login(a, g).await,
        Sub::Status(a) => status(a, g).await,
        Sub::Logout(a) => logout(a, g).await,
    }
}

/// Resolve portal + app with the flags laid over the usual lookup (env > --env-file > profile).
/// `need_secret` is false for status/logout, which only need the token file's location.
fn oauth_config(
    p: &PortalArgs,
    secret: Option<&str>,
    need_secret: bool,
    g: &Globals,
) -> anyhow::Result<(b24::Config, String, String, String)> {
    let base = g.lookup()?;
    let portal = p
        .portal
        .clone()
        .or_else(|| base("B24_DOMAIN"))
        .or_else(|| base("B24_PORTAL"))
        .ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                "which portal? give --portal HOST or set B24_DOMAIN",
            )
        })?;
    let client_id = p.client_id.clone().or_else(|| base("B24_CLIENT_ID"));
    let client_secret = secret
        .map(str::to_string)
        .or_else(|| base("B24_CLIENT_SECRET"));
    if need_secret && client_id.is_none() {
        return Err(Exit::new(
            exit::USAGE,
            "OAuth login needs --client-id or B24_CLIENT_ID",
        ));
    }
    if need_secret && client_secret.is_none() {
        return Err(Exit::new(
            exit::USAGE,
            "OAuth login needs the app's secret: set B24_CLIENT_SECRET (or --client-secret)",
        ));
    }
    let cid = client_id.clone().unwrap_or_else(|| "-".into());
    let csec = client_secret.clone().unwrap_or_else(|| "-".into());
    let portal2 = portal.clone();
    let cid2 = cid.clone();
    let csec2 = csec.clone();
    let lookup = move |k: &str| -> Option<String> {
        match k {
            "B24_AUTH_MODE" => Some("oauth".into()),
            "B24_DOMAIN" => Some(portal2.clone()),
            "B24_CLIENT_ID" => Some(cid2.clone()),
            "B24_CLIENT_SECRET" => Some(csec2.clone()),
            // The pair comes from the flow, not from the environment.
            "B24_ACCESS_TOKEN" | "B24_REFRESH_TOKEN" | "B24_WEBHOOK_URL" | "B24_WEBHOOK_CODE" => {
                None
            }
            _ => base(k),
        }
    };
    let cfg = b24::Config::from_lookup(&lookup, g.state_dir())
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let token_url = match &cfg.auth {
        b24::config::Auth::OAuth { token_url, .. } => token_url.clone(),
        _ => b24::config::DEFAULT_TOKEN_URL.to_string(),
    };
    Ok((cfg, cid, csec, token_url))
}

fn random_state() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn authorize_url(base_url: &str, client_id: &str, state: &str, redirect: Option<&str>) -> String {
    let mut u =
        url::Url::parse(&format!("{base_url}/oauth/authorize/")).expect("base url is valid");
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("client_id", client_id);
        q.append_pair("response_type", "code");
        q.append_pair("state", state);
        if let Some(r) = redirect {
            q.append_pair("redirect_uri", r);
        }
    }
    u.to_string()
}

/// What the loopback callback received.
struct Callback {
    code: String,
}

/// Serve HTTP on `listener` until a request carrying our `state` arrives. Requests with another
/// state (or none, e.g. a favicon) are answered and ignored.
async fn catch_callback(
    listener: tokio::net::TcpListener,
    state: String,
) -> anyhow::Result<Callback> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 1024];
        // Read the request head (we only need the request line).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let parsed = url::Url::parse(&format!("http://localhost{target}")).ok();
        let q: std::collections::HashMap<String, String> = parsed
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let (status, body, outcome) = if q.get("state") != Some(&state) {
            (
                "400 Bad Request",
                "b24: this is not the callback b24 is waiting for.",
                None,
            )
        } else if let Some(err) = q.get("error") {
            (
                "400 Bad Request",
                "b24: the portal refused the authorization; see the terminal.",
                Some(Err(Exit::new(
                    exit::AUTH,
                    format!(
                        "the portal refused the authorization: {err} {}",
                        q.get("error_description").map(String::as_str).unwrap_or("")
                    ),
                ))),
            )
        } else if let Some(code) = q.get("code") {
            (
                "200 OK",
                "b24: authorized. You can close this tab and return to the terminal.",
                Some(Ok(Callback { code: code.clone() })),
            )
        } else {
            ("400 Bad Request", "b24: the callback has no code.", None)
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
        if let Some(o) = outcome {
            return o;
        }
    }
}

fn open_browser(url: &str, with: Option<&str>) -> bool {
    let spawn = |prog: &str, extra: &[&str]| {
        std::process::Command::new(prog)
            .args(extra)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
    };
    if let Some(cmd) = with {
        let mut parts = cmd.split_whitespace();
        let prog = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        return !prog.is_empty() && spawn(prog, &rest);
    }
    if cfg!(target_os = "macos") {
        spawn("open", &[])
    } else if cfg!(windows) {
        spawn("cmd", &["/C", "start", ""])
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        spawn("xdg-open", &[])
    } else {
        false
    }
}

/// Exchange an authorization code at the token endpoint (docs/protocol.md §3.4).
async fn exchange(
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    code: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<TokenPair> {
    // main installed it already; a client built without it would panic, so make sure.
    b24::tls::install_default_provider();
    #[allow(clippy::disallowed_methods)] // the provider is installed just above
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    let http = b.build()?;
    let resp = http
        .get(token_url)
        .query(&[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("code", code),
        ])
        .send()
        .await
        .map_err(|e| {
            Exit::new(
                exit::TRANSIENT,
                format!("token endpoint unreachable: {}", e.without_url()),
            )
        })?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| {
        Exit::new(
            exit::TRANSIENT,
            format!("token endpoint: {}", e.without_url()),
        )
    })?;
    TokenPair::from_token_response(status, &body).map_err(|e| {
        let hint = match &e {
            b24::Error::Api(a) if a.code == "invalid_grant" => {
                " — the code expired (codes live 30 seconds) or was already used; run `b24 auth login` again"
            }
            b24::Error::Api(a) if a.code == "invalid_client" => {
                " — check the client id and secret (the app's settings in the portal)"
            }
            _ => "",
        };
        Exit::new(exit::AUTH, format!("code exchange failed: {e}{hint}"))
    })
}

fn status_json(cfg: &b24::Config, pair: Option<&TokenPair>) -> serde_json::Value {
    pair_json(&cfg.portal, &cfg.token_file(), pair)
}

/// What is safe to show about a pair: everything but the two tokens.
fn pair_json(portal: &str, path: &std::path::Path, pair: Option<&TokenPair>) -> serde_json::Value {
    let now = now_unix();
    match pair {
        None => json!({
            "logged_in": false,
            "portal": portal,
            "token_file": path,
        }),
        Some(p) => json!({
            "logged_in": true,
            "portal": portal,
            "member_id": p.member_id,
            "user_id": p.user_id,
            "scopes": p.scope.as_deref().map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).collect::<Vec<_>>()),
            "expires": p.expires.map(|t| jiff::Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default()),
            "expires_in_secs": p.expires.map(|t| t - now),
            "access_token_expired": p.expires.map(|t| t <= now),
            "has_refresh_token": !p.refresh_token.is_empty(),
            "obtained_at": jiff::Timestamp::from_second(p.obtained_at).map(|x| x.to_string()).unwrap_or_default(),
            "token_file": path,
        }),
    }
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    crate::out::pretty(v)
}

async fn login(a: LoginArgs, g: &Globals) -> anyhow::Result<i32> {
    let (cfg, client_id, client_secret, token_url) =
        oauth_config(&a.portal, a.client_secret.as_deref(), true, g)?;
    let code = match a.code.clone() {
        Some(c) => c.trim().to_string(),
        None => {
            if !a.listen.ip().is_loopback() {
                return Err(Exit::new(
                    exit::USAGE,
                    "--listen must be a loopback address (127.0.0.1 or ::1): the callback carries the code",
                ));
            }
            let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| {
                Exit::new(exit::USAGE, format!("cannot listen on {}: {e}", a.listen))
            })?;
            let local = listener.local_addr()?;
            let redirect = format!("http://{local}/callback");
            let state = random_state();
            let url = authorize_url(&cfg.base_url, &client_id, &state, Some(&redirect));
            crate::errln!(
                "b24: open this URL in a browser to authorize b24 for {}:",
                cfg.portal
            );
            crate::errln!("  {url}");
            crate::errln!(
                "b24: waiting up to {}s for the callback on {redirect} \
                 (no browser here? open the URL elsewhere and rerun with --code CODE)",
                a.timeout
            );
            if !a.no_browser && !open_browser(&url, a.open_with.as_deref()) && !g.quiet {
                crate::errln!("b24: could not open a browser; open the URL yourself");
            }
            let wait = Duration::from_secs_f64(a.timeout.max(0.0));
            match tokio::time::timeout(wait, catch_callback(listener, state)).await {
                Ok(r) => r?.code,
                Err(_) => {
                    return Err(Exit::new(
                        exit::AUTH,
                        format!(
                            "no authorization arrived on {redirect} within {}s; open the URL printed above, \
                             or get a code and run `b24 auth login --code CODE`",
                            a.timeout
                        ),
                    ));
                }
            }
        }
    };
    let pair = exchange(
        &token_url,
        &client_id,
        &client_secret,
        &code,
        cfg.ca_file.as_deref(),
    )
    .await?;
    let store = b24::client::token_store(&cfg)
        .await
        .map_err(|e| Exit::new(exit::USAGE, format!("cannot open the token store: {e}")))?;
    store
        .save(&pair)
        .await
        .map_err(|e| Exit::new(exit::USAGE, format!("cannot store the tokens: {e}")))?;
    if !g.quiet {
        let where_ = match cfg.token_backend {
            b24::config::TokenBackend::File => format!("(0600) in {}", cfg.token_file().display()),
            _ => format!("in {}", store.describe()),
        };
        crate::errln!("b24: logged in to {}; tokens stored {where_}", cfg.portal);
        crate::errln!(
            "b24: to use them: B24_AUTH_MODE=oauth B24_DOMAIN={} B24_CLIENT_ID=… B24_CLIENT_SECRET=… b24 call user.current",
            cfg.portal
        );
    }
    print_json(&status_json(&cfg, Some(&pair)))?;
    Ok(exit::OK)
}

async fn status(a: PortalArgs, g: &Globals) -> anyhow::Result<i32> {
    let lookup = g.lookup()?;
    if a.portal.is_none() && lookup("B24_DOMAIN").is_none() && lookup("B24_PORTAL").is_none() {
        return status_all(g);
    }
    let (cfg, ..) = oauth_config(&a, None, false, g)?;
    let store = b24::client::token_store(&cfg)
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let pair = store
        .load()
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let mut report = status_json(&cfg, pair.as_ref());
    if cfg.token_backend != b24::config::TokenBackend::File {
        report["token_file"] = serde_json::Value::Null;
        report["token_store"] = json!(store.describe());
    }
    print_json(&report)?;
    if pair.is_none() {
        if !g.quiet {
            crate::errln!(
                "b24: not logged in to {} (no {}); run `b24 auth login`",
                cfg.portal,
                cfg.token_file().display()
            );
        }
        return Ok(exit::AUTH);
    }
    Ok(exit::OK)
}

/// No portal named: show every stored pair in the state dir (one JSON object per line).
fn status_all(g: &Globals) -> anyhow::Result<i32> {
    let dir = g.state_dir();
    let mut found = 0;
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(portal) = name
            .strip_prefix("tokens-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let pair = FileTokenStore::new(&path)
            .read()
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        if let Some(p) = pair {
            found += 1;
            crate::outln!("{}", pair_json(portal, &path, Some(&p)))?;
        }
    }
    if found == 0 {
        if !g.quiet {
            crate::errln!(
                "b24: no stored OAuth tokens in {}; run `b24 auth login --portal HOST`",
                dir.display()
            );
        }
        return Ok(exit::AUTH);
    }
    Ok(exit::OK)
}

async fn logout(a: PortalArgs, g: &Globals) -> anyhow::Result<i32> {
    let (cfg, ..) = oauth_config(&a, None, false, g)?;
    if cfg.token_backend != b24::config::TokenBackend::File {
        let store = b24::client::token_store(&cfg)
            .await
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        let existed = store
            .load()
            .await
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?
            .is_some();
        store
            .clear()
            .await
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        print_json(
            &json!({"logged_out": true, "portal": cfg.portal, "removed": existed, "token_store": store.describe()}),
        )?;
        return Ok(exit::OK);
    }
    let path = cfg.token_file();
    let existed = path.exists();
    FileTokenStore::new(&path)
        .remove()
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let _ = std::fs::remove_file(path.with_extension("lock"));
    if !g.quiet {
        crate::errln!(
            "b24: {} {}",
            if existed {
                "deleted"
            } else {
                "no tokens stored at"
            },
            path.display()
        );
    }
    print_json(
        &json!({"logged_out": true, "portal": cfg.portal, "removed": existed, "token_file": path}),
    )?;
    Ok(exit::OK)
}
