//! The online receiver: Bitrix24 POSTs events form-encoded and never redelivers them, so an
//! event is committed to the queue *before* we answer 200. Anything that cannot be verified
//! gets 401 (forged token), 400 (malformed) or 413 (too big), and nothing is stored.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::queue::{NewEvent, Store};

/// Receiver settings.
pub struct ReceiverConfig {
    /// Reject bodies over this size with 413.
    pub max_body: usize,
    /// A token fixed by configuration (`B24_APPLICATION_TOKEN`): then install events cannot
    /// introduce another one.
    pub pinned_token: Option<String>,
}

struct Shared {
    store: Store,
    cfg: ReceiverConfig,
}

/// The axum router (mount it anywhere; every path accepts events).
pub fn router(store: Store, cfg: ReceiverConfig) -> Router {
    let max = cfg.max_body;
    let shared = Arc::new(Shared { store, cfg });
    Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .layer(DefaultBodyLimit::max(max))
        .with_state(shared)
}

fn reply(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The key of an online event: Bitrix24 gives no delivery id, so (event, data, ts, member).
pub fn online_key(member: &str, ev: &Value) -> String {
    let h = sha2::Sha256::digest(
        format!(
            "{}\n{}\n{}\n{}",
            member,
            s(ev.get("event")),
            ev.get("data").cloned().unwrap_or(Value::Null),
            s(ev.get("ts"))
        )
        .as_bytes(),
    );
    format!("online:{}", hex::encode(&h[..16]))
}

async fn receive(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(ev) = crate::form::parse(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "error": "malformed_body"}),
        );
    };
    let event = s(ev.get("event")).to_ascii_uppercase();
    let member = s(ev.get("auth").and_then(|a| a.get("member_id")));
    let token = s(ev.get("auth").and_then(|a| a.get("application_token")));
    if event.is_empty()
        || member.is_empty()
        || token.is_empty()
        || !event.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"status": "error", "error": "missing event, auth[member_id] or auth[application_token]"}),
        );
    }
    let stored = match sh.store.app_token(&member).await {
        Ok(t) => t,
        Err(_) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "error", "error": "store_unavailable"}),
            );
        }
    };
    let expected = sh.cfg.pinned_token.clone().or(stored.clone());
    let verified = expected
        .as_deref()
        .map(|t| same(t, &token))
        .unwrap_or(false);
    match event.as_str() {
        // First install of the app on this portal: trust on first use, unless a token is
        // pinned by configuration or already known (a re-install must match it).
        "ONAPPINSTALL" if expected.is_none() => {}
        // An update carries a new token; it must come for a portal we already know.
        "ONAPPUPDATE" if stored.is_some() && sh.cfg.pinned_token.is_none() => {}
        _ if !verified => {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"status": "error", "error": "invalid_application_token"}),
            );
        }
        _ => {}
    }
    let mut payload = ev.clone();
    // Tokens in the payload are the caller's credentials: keep them out of the queue.
    if let Some(auth) = payload.get_mut("auth").and_then(|a| a.as_object_mut()) {
        for k in ["access_token", "refresh_token", "application_token"] {
            if auth.contains_key(k) {
                auth.insert(k.into(), json!("[redacted]"));
            }
        }
    }
    let new = NewEvent {
        key: online_key(&member, &ev),
        source: "online".into(),
        name: event.clone(),
        payload,
    };
    if sh.store.enqueue(&[new]).await.is_err() {
        // Nothing is committed: do not answer 200.
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "error": "store_unavailable"}),
        );
    }
    let lifecycle = match event.as_str() {
        "ONAPPINSTALL" | "ONAPPUPDATE" => sh.store.set_app_token(&member, Some(&token)).await,
        "ONAPPUNINSTALL" => sh.store.set_app_token(&member, None).await,
        _ => Ok(()),
    };
    if lifecycle.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "error": "store_unavailable"}),
        );
    }
    reply(StatusCode::OK, json!({"status": "ok"}))
}
