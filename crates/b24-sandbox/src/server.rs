//! HTTP: routes, request parsing, the order of checks (bucket → faults → auth → method →
//! operating limit), the response envelope, the OAuth server and the control endpoints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};

use crate::events::Delivery;
use crate::exec::{access_check, run_one, time_block};
use crate::faults::Fault;
use crate::methods::{self, Caller, PErr, perr};
use crate::oauth::{
    ctl_advance, ctl_expire, ctl_faults, ctl_requests, ctl_reset, ctl_revoke, ctl_stats,
    oauth_authorize, oauth_token,
};
use crate::params::{get_ci, parse_query, text};
pub use crate::request::{merge, read_params};
use crate::state::State;
use crate::{Sandbox, SandboxConfig, SandboxError, StartInfo};

pub type Shared = Arc<Mutex<State>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn start(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| SandboxError::Listen {
        addr: cfg.listen,
        source: e,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| SandboxError::Listen {
            addr: cfg.listen,
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| SandboxError::Listen {
        addr: cfg.listen,
        source: e,
    })?;
    let scheme = if cfg.tls { "https" } else { "http" };
    let base_url = format!("{scheme}://{addr}");
    let data_file = cfg.data_file.clone();
    let seed_leads = cfg.seed_leads;
    let tls = cfg.tls;
    let mut st = State::new(cfg, base_url.clone());
    st.seed_leads(seed_leads);
    if let Some(path) = &data_file {
        load_data(&mut st, path)?;
    }
    let (access, refresh) = st.issue_pair(1);
    let info = StartInfo {
        base_url: base_url.clone(),
        webhook_url: format!("{base_url}/rest/1/{}/", st.webhook_code),
        user_id: 1,
        webhook_code: st.webhook_code.clone(),
        client_id: st.client_id.clone(),
        client_secret: st.client_secret.clone(),
        access_token: access,
        refresh_token: refresh,
        member_id: st.member_id.clone(),
        application_token: st.application_token.clone(),
        domain: st.domain.clone(),
        oauth_token_url: format!("{base_url}/oauth/token/"),
        oauth_authorize_url: format!("{base_url}/oauth/authorize/"),
        plan: st.cfg.plan,
        ca_file: None,
        http_url: None,
    };
    let max_body = st.cfg.max_body;
    let shared: Shared = Arc::new(Mutex::new(st));
    let app = router(shared.clone(), max_body);
    let token = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let mut info = info;
    let mut tmp = None;
    if tls {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            addr.ip().to_string(),
        ])
        .map_err(|e| SandboxError::Tls(e.to_string()))?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.signing_key.serialize_pem();
        let dir =
            std::env::temp_dir().join(format!("b24-sandbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::Tls(e.to_string()))?;
        let ca = dir.join("sandbox-ca.pem");
        std::fs::write(&ca, &cert_pem).map_err(|e| SandboxError::Tls(e.to_string()))?;
        info.ca_file = Some(ca);
        tmp = Some(crate::tempfile_dir::TempDir(dir));
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            cert_pem.into_bytes(),
            key_pem.into_bytes(),
        )
        .await
        .map_err(|e| SandboxError::Tls(e.to_string()))?;
        let handle = axum_server::Handle::new();
        let h2 = handle.clone();
        let t2 = token.clone();
        tokio::spawn(async move {
            t2.cancelled().await;
            h2.graceful_shutdown(Some(Duration::from_secs(1)));
        });
        let server = axum_server::from_tcp_rustls(listener, config)
            .map_err(|e| SandboxError::Tls(e.to_string()))?
            .handle(handle);
        tasks.push(tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        }));
        // Plain http next to it answers "Https required", as the real portal does.
        let plain = tokio::net::TcpListener::bind((addr.ip(), 0))
            .await
            .map_err(|e| SandboxError::Listen { addr, source: e })?;
        let paddr = plain
            .local_addr()
            .map_err(|e| SandboxError::Listen { addr, source: e })?;
        info.http_url = Some(format!("http://{paddr}"));
        let https_only = Router::new().fallback(|| async {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"error": "INVALID_REQUEST", "error_description": "Https required"}),
                ),
            )
        });
        let t3 = token.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(plain, https_only)
                .with_graceful_shutdown(t3.cancelled_owned())
                .await;
        }));
    } else {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| SandboxError::Listen { addr, source: e })?;
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(t.cancelled_owned())
                .await;
        }));
    }
    Ok(Sandbox {
        info,
        state: shared,
        shutdown: token,
        tasks,
        _tmp: tmp,
    })
}

fn load_data(st: &mut State, path: &std::path::Path) -> Result<(), SandboxError> {
    let err = |reason: String| SandboxError::Data {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let who = Caller {
        kind: "webhook",
        user_id: 1,
        cred: "seed".into(),
        connector: String::new(),
    };
    let mut dl = Vec::new();
    for (key, kind) in [
        ("leads", "lead"),
        ("deals", "deal"),
        ("contacts", "contact"),
        ("companies", "company"),
    ] {
        for rec in v.get(key).and_then(|x| x.as_array()).into_iter().flatten() {
            methods::call(
                st,
                &who,
                &format!("crm.{kind}.add"),
                &json!({"fields": rec}),
                &mut dl,
            )
            .map_err(|e| err(format!("{key}: {}", e.desc)))?;
        }
    }
    Ok(())
}

fn router(shared: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/rest/{*path}", any(rest))
        .route("/oauth/token", any(oauth_token))
        .route("/oauth/token/", any(oauth_token))
        .route("/oauth/authorize", get(oauth_authorize))
        .route("/oauth/authorize/", get(oauth_authorize))
        .route("/_sandbox/stats", get(ctl_stats))
        .route("/_sandbox/requests", get(ctl_requests))
        .route("/_sandbox/expire-tokens", post(ctl_expire))
        .route("/_sandbox/revoke-tokens", post(ctl_revoke))
        .route("/_sandbox/faults", post(ctl_faults))
        .route("/_sandbox/reset-stats", post(ctl_reset))
        .route("/_sandbox/advance", post(ctl_advance))
        .route("/_sandbox/install", post(crate::portals::ctl_install))
        .route("/_sandbox/uninstall", post(crate::portals::ctl_uninstall))
        .fallback(|| async {
            error_response(
                &perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
                false,
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state((shared, max_body))
}

pub type AppState = (Shared, usize);

pub fn error_response(e: &PErr, v3: bool) -> Response {
    let body = if v3 && e.code.starts_with("BITRIX_REST_V3") {
        json!({"error": {"code": e.code, "message": e.desc}})
    } else {
        json!({"error": e.code, "error_description": e.desc})
    };
    (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

struct Route {
    v3: bool,
    webhook: Option<(String, String)>,
    method: String,
}

fn route(path: &str) -> Option<Route> {
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let v3 = segs.first() == Some(&"api");
    if v3 {
        segs.remove(0);
    }
    let (webhook, method) = match segs.as_slice() {
        [user, code, method] if user.chars().all(|c| c.is_ascii_digit()) => {
            (Some((user.to_string(), code.to_string())), *method)
        }
        [method] => (None, *method),
        _ => return None,
    };
    let method = method
        .trim_end_matches(".json")
        .trim_end_matches(".xml")
        .to_ascii_lowercase();
    Some(Route {
        v3,
        webhook,
        method,
    })
}

enum Reply {
    Json(StatusCode, Value, Vec<(&'static str, String)>),
    Drop,
}

async fn rest(
    AxState((shared, max)): AxState<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().trim_start_matches("/rest");
    let Some(rt) = route(path) else {
        return error_response(
            &perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
            false,
        );
    };
    let query = if rt.v3 {
        Value::Object(Map::new())
    } else {
        parse_query(uri.query().unwrap_or(""))
    };
    let body_params = if method == Method::GET || method == Method::HEAD {
        Ok(Value::Object(Map::new()))
    } else {
        read_params(&headers, body, max, rt.v3).await
    };
    let idem_key = headers.get("idempotency-key").map(|v| {
        v.to_str()
            .map(str::to_string)
            .unwrap_or_else(|_| "\u{0}".into())
    });
    let mut deliveries = Vec::new();
    let (reply, latency, hold) = {
        let mut st = lock(&shared);
        let mut latency = Duration::ZERO;
        let mut fault = Fault::None;
        let spec = st.cfg.faults.clone();
        if spec != crate::FaultSpec::default() {
            let (u, w) = st.fault_draw();
            if let Some((a, b)) = spec.latency {
                latency = a + (b - a).mul_f64(w);
            }
            fault = spec.pick(u);
            if fault != Fault::None {
                st.stats_.faults_injected += 1;
            }
        }
        let seq_before = st.seq;
        let mut r = handle(
            &mut st,
            &rt,
            query,
            body_params,
            idem_key,
            fault,
            &mut deliveries,
        );
        // Counted faults: a write that ran loses (or holds) its answer afterwards.
        let ran = st.log.last().filter(|l| l.seq > seq_before);
        let write = ran.is_some_and(|l| {
            if rt.v3 {
                crate::v3::v3_write(&l.method)
            } else {
                crate::faults::is_write_name(&l.method, &l.batch)
            }
        });
        let ok = matches!(&r, Reply::Json(s, _, _) if *s == StatusCode::OK);
        match st.cfg.faults.after_run(write, ok) {
            Fault::Drop => r = Reply::Drop,
            Fault::Timeout => fault = Fault::Timeout,
            _ => {}
        }
        st.notify_offline(&mut deliveries);
        if st.cfg.timing == crate::Timing::Realistic
            && let Reply::Json(_, body, _) = &r
        {
            // The call takes its modelled duration (a batch: the sum of its commands). The
            // wait happens after the lock is released, so concurrent calls overlap.
            let secs = body["time"]["duration"].as_f64().unwrap_or(0.0);
            if secs.is_finite() && secs > 0.0 {
                latency += Duration::from_secs_f64(secs.min(600.0));
            }
        }
        (r, latency, fault == Fault::Timeout)
    };
    spawn_deliveries(shared.clone(), deliveries);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if hold {
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
    match reply {
        Reply::Json(status, v, hdrs) => {
            let mut resp = (status, axum::Json(v)).into_response();
            for (k, val) in hdrs {
                if let Ok(hv) = HeaderValue::from_str(&val) {
                    resp.headers_mut().insert(k, hv);
                }
            }
            resp
        }
        Reply::Drop => {
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other(
                    "connection dropped by fault injection",
                ))
            });
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
    }
}

fn err_reply(st: &mut State, method: &str, auth: &str, v3: bool, e: PErr) -> Reply {
    st.record(method, auth, e.status, v3, vec![]);
    let body = if v3 && e.code.starts_with("BITRIX_REST_V3") {
        json!({"error": {"code": e.code, "message": e.desc}})
    } else {
        json!({"error": e.code, "error_description": e.desc})
    };
    Reply::Json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        body,
        vec![],
    )
}

fn handle(
    st: &mut State,
    rt: &Route,
    query: Value,
    body: Result<Value, PErr>,
    idem: Option<String>,
    fault: Fault,
    dl: &mut Vec<Delivery>,
) -> Reply {
    let m = rt.method.as_str();
    let auth_kind = if rt.webhook.is_some() {
        "webhook"
    } else {
        "oauth"
    };
    if !st.bucket_admit() {
        return err_reply(
            st,
            m,
            auth_kind,
            rt.v3,
            perr(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        );
    }
    match fault {
        Fault::Err503 => {
            return err_reply(
                st,
                m,
                auth_kind,
                rt.v3,
                perr(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
            );
        }
        Fault::Err500 => {
            return err_reply(
                st,
                m,
                auth_kind,
                rt.v3,
                perr(500, "INTERNAL_SERVER_ERROR", "Internal server error"),
            );
        }
        Fault::Drop => {
            st.record(m, auth_kind, 0, rt.v3, vec![]);
            return Reply::Drop;
        }
        _ => {}
    }
    let params = match body {
        Ok(b) => merge(query, b),
        Err(e) => return err_reply(st, m, auth_kind, rt.v3, e),
    };
    if st.cfg.free_plan {
        return err_reply(
            st,
            m,
            auth_kind,
            rt.v3,
            perr(
                403,
                "ACCESS_DENIED",
                "REST API is available only on commercial plans",
            ),
        );
    }
    // Authentication.
    let who = match &rt.webhook {
        Some((user, code)) => {
            if user != "1" || *code != st.webhook_code {
                return err_reply(
                    st,
                    m,
                    "webhook",
                    rt.v3,
                    perr(401, "NO_AUTH_FOUND", "Wrong authorization data"),
                );
            }
            Caller {
                kind: "webhook",
                user_id: 1,
                cred: format!("webhook:{code}"),
                connector: String::new(),
            }
        }
        None => {
            let token = get_ci(&params, "auth").map(text).unwrap_or_default();
            if token.is_empty() {
                return err_reply(
                    st,
                    m,
                    "none",
                    rt.v3,
                    perr(401, "NO_AUTH_FOUND", "Wrong authorization data"),
                );
            }
            if fault == Fault::Expire
                && let Some(t) = st.access.get_mut(&token)
            {
                t.expires_at = 0.0;
            }
            let now = st.now();
            match st.access.get(&token) {
                None => {
                    return err_reply(
                        st,
                        m,
                        "oauth",
                        rt.v3,
                        perr(401, "NO_AUTH_FOUND", "Wrong authorization data"),
                    );
                }
                Some(t) if t.revoked => {
                    return err_reply(
                        st,
                        m,
                        "oauth",
                        rt.v3,
                        perr(401, "invalid_token", "The access token provided is invalid"),
                    );
                }
                Some(t) if t.expires_at <= now => {
                    return err_reply(
                        st,
                        m,
                        "oauth",
                        rt.v3,
                        perr(
                            401,
                            "expired_token",
                            "The access token provided has expired",
                        ),
                    );
                }
                Some(t) => Caller {
                    kind: "oauth",
                    user_id: t.user_id,
                    cred: format!("app:{}", st.client_id),
                    connector: String::new(),
                },
            }
        }
    };
    let mut params = params;
    if let Some(o) = params.as_object_mut() {
        o.remove("auth");
    }
    if rt.v3 {
        return handle_v3(st, &who, m, &params, idem);
    }
    if let Err(e) = access_check(st, &who, m) {
        return err_reply(st, m, who.kind, false, e);
    }
    let start = st.now();
    let (result, sub_methods) = if m == "batch" {
        crate::batch::run_batch(st, &who, &params, dl)
    } else {
        (run_one(st, &who, m, &params, dl, 0.0), vec![])
    };
    match result {
        Ok((out, op)) => {
            let mut body = json!({"result": out.result});
            if let Some(n) = out.next {
                body["next"] = json!(n);
            }
            if let Some(t) = out.total {
                body["total"] = json!(t);
            }
            body["time"] = time_block(start, out.cost, op);
            st.record(m, who.kind, 200, false, sub_methods);
            Reply::Json(StatusCode::OK, body, vec![])
        }
        Err(e) => err_reply(st, m, who.kind, false, e),
    }
}

fn handle_v3(st: &mut State, who: &Caller, m: &str, params: &Value, idem: Option<String>) -> Reply {
    if !crate::v3::is_v3(m) {
        return err_reply(
            st,
            m,
            who.kind,
            true,
            perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
        );
    }
    let write = crate::v3::v3_write(m);
    let mut hdrs = vec![];
    let key = if write { idem } else { None };
    if let Some(k) = &key {
        if k.is_empty() || k.len() > 255 || !k.chars().all(|c| (' '..='~').contains(&c)) {
            return err_reply(
                st,
                m,
                who.kind,
                true,
                perr(
                    400,
                    "BITRIX_REST_V3_EXCEPTION_INVALIDIDEMPOTENCYKEYEXCEPTION",
                    "Invalid idempotency key",
                ),
            );
        }
        let hash = crate::v3::body_hash(params);
        // Scope: (application or webhook) × user × method.
        let slot = (
            format!("{}#{}", who.cred, who.user_id),
            m.to_string(),
            k.clone(),
        );
        let now = st.now();
        if let Some((h, stored, at)) = st.idempotency.get(&slot).cloned()
            && now - at < 86_400.0
        {
            if h != hash {
                return err_reply(
                    st,
                    m,
                    who.kind,
                    true,
                    perr(
                        422,
                        "BITRIX_REST_V3_EXCEPTION_IDEMPOTENCYKEYREUSEDEXCEPTION",
                        "Idempotency key was already used with another request body",
                    ),
                );
            }
            st.record(m, who.kind, 200, true, vec![]);
            return Reply::Json(
                StatusCode::OK,
                stored,
                vec![
                    ("idempotency-key", k.clone()),
                    ("idempotent-replayed", "true".into()),
                ],
            );
        }
        hdrs.push(("idempotency-key", k.clone()));
    }
    let start = st.now();
    match crate::v3::call_v3(st, m, params) {
        Ok(result) => {
            let body = json!({"result": result, "time": time_block(start, 0.01, None)});
            if let Some(k) = key {
                let hash = crate::v3::body_hash(params);
                st.idempotency.insert(
                    (format!("{}#{}", who.cred, who.user_id), m.to_string(), k),
                    (hash, body.clone(), start),
                );
            }
            st.record(m, who.kind, 200, true, vec![]);
            Reply::Json(StatusCode::OK, body, hdrs)
        }
        Err(e) => err_reply(st, m, who.kind, true, e),
    }
}

pub(crate) fn spawn_deliveries(shared: Shared, deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build();
        let Ok(client) = client else { return };
        for d in deliveries {
            // No retries: the real portal never redelivers an online event.
            let ok = client
                .post(&d.url)
                .form(&d.form)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let mut st = lock(&shared);
            if ok {
                st.stats_.online_delivered += 1;
            } else {
                st.stats_.online_failed += 1;
            }
        }
    });
}
