//! HTTP: routes, request parsing, the order of checks (bucket → faults → auth → method →
//! operating limit), the response envelope, the OAuth server and the control endpoints.
//!
//! [`start`](start::start) binds the listeners (TLS and the plain-http neighbour) and seeds the
//! data; `rest` runs one REST call through the checks in the portal's order; `v3` answers
//! REST 3.0 calls with their idempotency keys. This module holds what they share: the router,
//! the error envelope and the delivery of online events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::events::Delivery;
use crate::methods::{PErr, perr};
use crate::oauth::{
    ctl_advance, ctl_expire, ctl_faults, ctl_requests, ctl_reset, ctl_revoke, ctl_stats,
    oauth_authorize, oauth_token,
};
pub use crate::request::{merge, read_params};
use crate::state::State;

mod rest;
mod start;
mod v3;

pub use start::start;

pub type Shared = Arc<Mutex<State>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn router(shared: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/rest/{*path}", any(rest::rest))
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
pub(crate) fn spawn_deliveries(shared: Shared, deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    tokio::spawn(async move {
        crate::install_crypto_provider();
        #[allow(clippy::disallowed_methods)] // the provider is installed just above
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
