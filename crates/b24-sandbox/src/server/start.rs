//! Starting a sandbox: the listener (with TLS, a self-signed certificate and a plain-http
//! neighbour that answers "Https required"), the first token pair and the seed data.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Shared, router};
use crate::methods::{self, Caller};
use crate::state::State;
use crate::{Sandbox, SandboxConfig, SandboxError, StartInfo};

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
        crate::install_crypto_provider();
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
