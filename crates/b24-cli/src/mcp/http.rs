//! `b24 mcp --http ADDR`: the same server over Streamable HTTP (the current MCP transport), for
//! agent hosts that connect to a URL rather than start a process.
//!
//! What this layer adds, and why:
//!
//! - **Bearer tokens per client.** Every request must carry `Authorization: Bearer <token>` for
//!   a token the operator issued (`b24 mcp token add`); anything else gets `401` before rmcp
//!   sees it, so an unauthenticated request can never reach a tool (or the portal). The token
//!   store is consulted on every request, so a revoked token stops working at once. Which
//!   policy, audit identity and write budget a client has is decided in
//!   [`b24_guard::clients`]; this module only attaches the client to the request.
//! - **Sessions bound to their client.** A session created with one token is not usable with
//!   another (answered like an unknown session), so a leaked session id is worth nothing
//!   without its token.
//! - **Bounded sessions.** Each live session holds a worker task and buffers, so their number
//!   is capped per client (`--max-sessions-per-client`, default
//!   [`DEFAULT_MAX_SESSIONS_PER_CLIENT`]) and in all (`--max-sessions`, default
//!   [`DEFAULT_MAX_SESSIONS`]). At a cap a request that would open a session gets `429` with a
//!   JSON-RPC error saying which cap; no live session is closed to make room. A session with no
//!   request for `--session-idle-secs` (default 300) is closed by rmcp's session manager and
//!   stops counting; so does one the client ends with `DELETE`.
//! - **DNS rebinding.** rmcp checks `Host` (loopback names by default, plus `--allowed-host`)
//!   and, because we enable it, `Origin`: a request with an `Origin` not listed in
//!   `--allowed-origin` gets `403`, as the MCP transport spec requires.
//! - **Transport security.** Loopback by default; any other address needs `--tls-cert` and
//!   `--tls-key`, or `--behind-tls-proxy` to say a proxy in front terminates TLS — bearer tokens
//!   must not cross a network in clear text.
//! - **Graceful shutdown.** SIGINT/SIGTERM stop accepting, end the sessions (their SSE streams
//!   close) and wait a bounded time for requests in flight.
//!
//! Sessions, resumable SSE streams (`Last-Event-ID`, priming events with a retry interval) and
//! the protocol-version rules are rmcp's `StreamableHttpService` with its in-memory session
//! manager.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use b24_guard::clients::TokenStore;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::server::B24Mcp;
use crate::exit::{self, Exit};
use crate::globals::Globals;

/// The path the MCP endpoint is served at.
pub const ENDPOINT: &str = "/mcp";
/// How long requests in flight get after SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// How long a connection may take to send a request's headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The header rmcp keeps the session in.
const SESSION_HEADER: &str = "mcp-session-id";
/// Live sessions one client (token) may hold at once.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 16;
/// Live sessions of all clients together.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// A session without a request for this long is closed.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);

/// How `b24 mcp --http` was asked to serve.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    /// PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A proxy in front terminates TLS (allows a non-loopback address without --tls-*).
    pub behind_tls_proxy: bool,
    /// Extra `Host` values accepted (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted; every other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
    /// Live sessions in all; a new one beyond it is refused (429).
    pub max_sessions: usize,
    /// Live sessions per client; a new one beyond it is refused (429).
    pub max_sessions_per_client: usize,
    /// A session idle this long is closed.
    pub session_idle: Duration,
}

impl HttpOptions {
    /// Refuse settings that would expose tokens or accept any `Host`.
    pub fn check(&self) -> Result<(), String> {
        let ip = self.addr.ip();
        if !ip.is_loopback() && self.tls.is_none() && !self.behind_tls_proxy {
            return Err(format!(
                "--http {}: a non-loopback address needs TLS (--tls-cert FILE --tls-key FILE), or --behind-tls-proxy when a proxy in front terminates it; bearer tokens must not travel in clear text",
                self.addr
            ));
        }
        if self.max_sessions == 0 || self.max_sessions_per_client == 0 {
            return Err(
                "--max-sessions and --max-sessions-per-client must be at least 1".to_string(),
            );
        }
        if self.session_idle.is_zero() {
            return Err("--session-idle-secs must be at least 1".to_string());
        }
        if ip.is_unspecified() && self.allowed_hosts.is_empty() {
            return Err(format!(
                "--http {}: a wildcard address accepts any Host header; name the host names clients use with --allowed-host (DNS-rebinding protection)",
                self.addr
            ));
        }
        Ok(())
    }

    /// The `Host` values rmcp accepts: loopback names, the bound address, and --allowed-host.
    fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let ip = self.addr.ip();
        if !ip.is_unspecified() {
            h.push(ip.to_string());
        }
        h.extend(self.allowed_hosts.iter().cloned());
        h.sort();
        h.dedup();
        h
    }
}

/// What the authentication layer needs.
struct Auth {
    tokens: Arc<TokenStore>,
    sessions: Mutex<Sessions>,
    manager: Arc<LocalSessionManager>,
    max_sessions: usize,
    max_per_client: usize,
}

/// The sessions this layer knows of.
#[derive(Default)]
struct Sessions {
    /// Session id → the client that created it, and when it was recorded.
    owners: HashMap<String, (String, Instant)>,
    /// Requests that may open a session, in flight, per client: they hold a place under the
    /// caps until they are answered, so parallel requests cannot all pass a check that only
    /// some should.
    opening: HashMap<String, usize>,
}

impl Sessions {
    fn opening_total(&self) -> usize {
        self.opening.values().sum()
    }

    fn count_of(&self, client: &str) -> usize {
        self.owners.values().filter(|(o, _)| o == client).count()
            + self.opening.get(client).copied().unwrap_or(0)
    }

    fn release(&mut self, client: &str) {
        if let Some(n) = self.opening.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.opening.remove(client);
            }
        }
    }
}

/// A place taken under the caps; given back when dropped (also when the client goes away
/// before its answer).
struct Opening<'a> {
    auth: &'a Auth,
    client: String,
    /// Still to be given back (false once it became a session).
    held: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        self.auth
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(&self.client);
    }
}

impl Auth {
    /// Take a place for a request that may open a session of `client`, or say which cap is
    /// reached. Sessions the manager has closed (idle, `DELETE`, ended) are forgotten first.
    async fn take_place(&self, client: &str) -> Result<Opening<'_>, String> {
        // Sessions recorded after this instant may be missing from the manager's list (opened
        // meanwhile by another request) and are kept whatever it says.
        let listed_at = Instant::now();
        let live: std::collections::HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.owners
            .retain(|k, (_, at)| *at >= listed_at || live.contains(k));
        let mine = s.count_of(client);
        if mine >= self.max_per_client {
            return Err(format!(
                "this client already has {mine} live MCP sessions, the most one client may hold (--max-sessions-per-client {}); reuse a session, end unused ones with DELETE, or wait until idle ones expire",
                self.max_per_client
            ));
        }
        let total = s.owners.len() + s.opening_total();
        if total >= self.max_sessions {
            return Err(format!(
                "the server already has {total} live MCP sessions, the most it holds (--max-sessions {}); try again when sessions have ended or expired",
                self.max_sessions
            ));
        }
        *s.opening.entry(client.to_string()).or_default() += 1;
        Ok(Opening {
            auth: self,
            client: client.to_string(),
            held: true,
        })
    }
}

/// `429` with a JSON-RPC error: no session was opened.
fn too_many_sessions(message: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32000, "message": message, "data": {"error": "too_many_sessions"}},
        })
        .to_string(),
    )
        .into_response()
}

fn unauthorized(invalid: bool, message: &str) -> Response {
    let challenge = if invalid {
        r#"Bearer realm="b24 mcp", error="invalid_token""#
    } else {
        r#"Bearer realm="b24 mcp""#
    };
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, challenge),
            (header::CONTENT_TYPE, "application/json"),
        ],
        serde_json::json!({"error": "unauthorized", "message": message}).to_string(),
    )
        .into_response()
}

/// The bearer token of a request: `None` when there is no Authorization header, `Some(Err)`
/// when there is one that is not a bearer token — or more than one: `Authorization` is a
/// singleton field, and a proxy in front that reads the last copy while this reads the first
/// would let one client's request be taken for another's.
fn bearer(headers: &HeaderMap) -> Option<Result<String, &'static str>> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return Some(Err("the request has more than one Authorization header"));
    }
    let Ok(v) = v.to_str() else {
        return Some(Err("the Authorization header is not a bearer token"));
    };
    let mut parts = v.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Some(Err("the Authorization header is not a bearer token"));
    }
    Some(Ok(token.to_string()))
}

/// A `Host` that is no host a client uses: one naming user info (`evil.example@localhost`) —
/// the DNS-rebinding check reads only the part after `@`, a proxy might route on the rest —
/// whether in the `Host` header or in HTTP/2's `:authority`, or more than one `Host` header
/// (RFC 9112 asks for 400; the check reads the first, a proxy may read the last).
fn bad_host(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let hosts = headers.get_all(header::HOST);
    hosts.iter().count() > 1
        || hosts.iter().any(|h| h.as_bytes().contains(&b'@'))
        || uri.authority().is_some_and(|a| a.as_str().contains('@'))
}

/// Authenticate every request; attach the client; keep sessions bound to their client.
async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    if bad_host(req.headers(), req.uri()) {
        return (StatusCode::BAD_REQUEST, "Bad Request: Invalid Host header").into_response();
    }
    let token = match bearer(req.headers()) {
        None => {
            return unauthorized(
                false,
                "this MCP server needs a bearer token: Authorization: Bearer <token> (the operator issues one with `b24 mcp token add NAME --policy FILE`)",
            );
        }
        Some(Err(why)) => {
            return unauthorized(true, why);
        }
        Some(Ok(t)) => t,
    };
    let client = match auth.tokens.authenticate(&token).await {
        Ok(Some(c)) => Arc::new(c),
        Ok(None) => {
            // The operator sees refused tokens (never their text) on stderr.
            tracing::warn!("mcp http: refused a request with an unknown or revoked token (401)");
            return unauthorized(true, "the token is unknown or revoked");
        }
        Err(e) => {
            tracing::error!("mcp http: the token store failed: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the token store cannot be read; try again",
            )
                .into_response();
        }
    };
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(s) = &session {
        let owner = auth
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .owners
            .get(s)
            .map(|(o, _)| o.clone());
        // Only the client that opened a session may use it; a session without a recorded
        // owner is nobody's (fail closed), and is answered like an unknown one.
        if owner.as_deref() != Some(client.name.as_str()) {
            if owner.is_some() {
                tracing::warn!(client = %client.name, "mcp http: a session of another client was presented");
            }
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
    }
    tracing::debug!(client = %client.name, method = %req.method(), "mcp http request");
    let name = client.name.clone();
    let is_delete = req.method() == Method::DELETE;
    // Only a POST without a session can open one (an `initialize`); it needs a place under
    // the caps before rmcp sees it.
    let place = if session.is_none() && req.method() == Method::POST {
        match auth.take_place(&name).await {
            Ok(p) => Some(p),
            Err(why) => {
                tracing::warn!(client = %name, "mcp http: refused a new session: {why}");
                return too_many_sessions(&why);
            }
        }
    } else {
        None
    };
    req.extensions_mut().insert(client);
    let resp = next.run(req).await;
    if session.is_none()
        && let Some(new) = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        let mut s = auth.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.owners.insert(new.to_string(), (name, Instant::now()));
        // The place becomes the session: released under the same lock, so no count misses it.
        if let Some(mut p) = place {
            s.release(&p.client);
            p.held = false;
        }
    } else if is_delete
        && resp.status().is_success()
        && let Some(s) = &session
    {
        auth.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .owners
            .remove(s);
    }
    resp
}

/// The TLS configuration from PEM files (ring, as the client side uses).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let usage = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        Exit::new(exit::USAGE, format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| usage(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(cert, &e))?;
    if certs.is_empty() {
        return Err(usage(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| usage(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| usage(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| usage(key, &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serve until `shutdown` is cancelled. The bound address is announced on stderr (the port
/// may have been 0): `b24 mcp: serving Streamable HTTP at http://ADDR/mcp`.
pub async fn serve(
    g: &Globals,
    elicit: bool,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    opts.check().map_err(|m| Exit::new(exit::USAGE, m))?;
    let tls = match &opts.tls {
        Some((c, k)) => Some(tls_config(c, k)?),
        None => None,
    };
    // The tokens live with the guard's records, or in the cluster's PostgreSQL store.
    let tokens = crate::cmd::mcp::token_store(g).await?;
    let active = tokens
        .list()
        .await
        .map_err(|e| Exit::new(exit::INTERNAL, e.to_string()))?
        .iter()
        .filter(|t| t.revoked_at.is_none())
        .count();
    if active == 0 {
        crate::errln!(
            "b24 mcp: no client tokens are issued yet, so every request gets 401; issue one with `b24 mcp token add NAME --policy FILE` (it applies without a restart)"
        );
    }

    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(opts.session_idle);
    let manager = Arc::new(manager);
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_allowed_hosts(opts.hosts())
        .with_allowed_origins(opts.allowed_origins.clone())
        .enforce_origin_validation();
    let globals = Arc::new(g.clone());
    let service = StreamableHttpService::new(
        move || Ok(B24Mcp::for_http(globals.clone(), elicit)),
        manager.clone(),
        config,
    );
    let auth = Arc::new(Auth {
        tokens: Arc::new(tokens),
        sessions: Mutex::new(Sessions::default()),
        manager,
        max_sessions: opts.max_sessions,
        max_per_client: opts.max_sessions_per_client,
    });
    let app = axum::Router::new()
        .route_service(ENDPOINT, service)
        .route_layer(axum::middleware::from_fn_with_state(auth, authenticate));

    let listener = std::net::TcpListener::bind(opts.addr)
        .map_err(|e| Exit::new(exit::USAGE, format!("--http {}: {e}", opts.addr)))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    crate::errln!(
        "b24 mcp: serving Streamable HTTP at {scheme}://{bound}{ENDPOINT} ({active} client token(s) active)"
    );

    // One server for both schemes, so both get the same connection limits: a client that
    // never finishes its request headers (slowloris) is dropped after HEADER_READ_TIMEOUT
    // instead of holding a connection (and a file descriptor) forever, before any token is
    // seen. SSE streams are responses, which the timeout does not touch.
    let handle = axum_server::Handle::<SocketAddr>::new();
    let h = handle.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        h.graceful_shutdown(Some(GRACE));
    });
    let server = match tls {
        Some(cfg) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg));
            let mut srv = axum_server::from_tcp_rustls(listener, rustls)?.handle(handle);
            srv.http_builder()
                .http1()
                .header_read_timeout(Some(HEADER_READ_TIMEOUT));
            tokio::spawn(async move { srv.serve(app.into_make_service()).await })
        }
        None => {
            let mut srv = axum_server::from_tcp(listener)?.handle(handle);
            srv.http_builder()
                .http1()
                .header_read_timeout(Some(HEADER_READ_TIMEOUT));
            tokio::spawn(async move { srv.serve(app.into_make_service()).await })
        }
    };
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r?.map_err(anyhow::Error::from),
        _ = shutdown.cancelled() => {}
    }
    // Sessions end with the cancellation (their streams close); requests in flight get GRACE.
    match tokio::time::timeout(GRACE + Duration::from_secs(1), &mut server).await {
        Ok(r) => r?.map_err(anyhow::Error::from)?,
        Err(_) => {
            tracing::warn!("mcp http: requests still running after {GRACE:?}; stopping anyway");
        }
    }
    crate::errln!("b24 mcp: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn one_bearer_header_or_nothing() {
        assert_eq!(bearer(&headers(&[])), None);
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  b24mcp_x ")])),
            Some(Ok("b24mcp_x".to_string()))
        );
        for bad in ["Basic b24mcp_x", "Bearer", "Bearer\tb24mcp_x", "b24mcp_x"] {
            assert!(
                matches!(bearer(&headers(&[("authorization", bad)])), Some(Err(_))),
                "{bad}"
            );
        }
        // Two copies, whichever is valid: refused.
        let two = headers(&[
            ("authorization", "Bearer b24mcp_a"),
            ("authorization", "Bearer b24mcp_b"),
        ]);
        assert!(matches!(bearer(&two), Some(Err(m)) if m.contains("more than one")));
    }

    #[test]
    fn a_host_with_user_info_or_two_hosts_is_refused() {
        let plain: axum::http::Uri = "/mcp".parse().unwrap();
        let bad = |h: &[(&str, &str)]| bad_host(&headers(h), &plain);
        assert!(bad(&[("host", "evil.example:80@localhost")]));
        assert!(bad(&[("host", "localhost"), ("host", "evil.example")]));
        assert!(!bad(&[("host", "localhost:8787")]));
        assert!(!bad(&[]));
        // HTTP/2 carries it as :authority.
        let h2: axum::http::Uri = "http://evil.example@localhost/mcp".parse().unwrap();
        assert!(bad_host(&headers(&[]), &h2));
        let h2: axum::http::Uri = "http://localhost:8787/mcp".parse().unwrap();
        assert!(!bad_host(&headers(&[]), &h2));
    }
}
