//! The OAuth server (`/oauth/token`, `/oauth/authorize`) and the loopback control endpoints
//! (`/_sandbox/*`) that tests and benchmarks use to read counters and steer the portal.

use axum::body::Body;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::params::{parse_query, text};
use crate::server::{AppState, error_response, lock, merge, read_params};
use crate::state::State;

pub async fn oauth_token(
    AxState((shared, max)): AxState<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut params = parse_query(uri.query().unwrap_or(""));
    if method == Method::POST {
        match read_params(&headers, body, max, false).await {
            Ok(b) => params = merge(params, b),
            Err(e) => return error_response(&e, false),
        }
    }
    let g = |k: &str| params.get(k).map(text).unwrap_or_default();
    // One app, many portals: the OAuth server is central (see `portals`).
    let shared = crate::portals::oauth_home(&shared, &g("refresh_token"));
    let mut st = lock(&shared);
    let fail = |st: &mut State, status: u16, code: &str, desc: &str| {
        st.record("oauth/token", "oauth", status, false, vec![]);
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            axum::Json(json!({"error": code, "error_description": desc})),
        )
            .into_response()
    };
    if g("client_id") != st.client_id || g("client_secret") != st.client_secret {
        return fail(&mut st, 401, "invalid_client", "Invalid client");
    }
    let user = match g("grant_type").as_str() {
        "authorization_code" => {
            let now = st.now();
            match st.codes.remove(&g("code")) {
                Some(exp) if exp > now => {
                    st.stats_.code_exchanges += 1;
                    1
                }
                _ => return fail(&mut st, 400, "invalid_grant", "Invalid authorization code"),
            }
        }
        "refresh_token" => match st.refresh.remove(&g("refresh_token")) {
            Some(u) => {
                st.stats_.refreshes += 1;
                u
            }
            None => return fail(&mut st, 400, "invalid_grant", "Invalid refresh token"),
        },
        _ => return fail(&mut st, 400, "invalid_request", "Unsupported grant_type"),
    };
    let (a, r) = st.issue_pair(user);
    let body = st.token_json(&a, &r, user);
    st.record("oauth/token", "oauth", 200, false, vec![]);
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub async fn oauth_authorize(
    AxState((shared, _)): AxState<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut st = lock(&shared);
    if q.get("client_id")
        .map(|c| c != &st.client_id)
        .unwrap_or(true)
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_client", "error_description": "Unknown client_id"}),
            ),
        )
            .into_response();
    }
    let code = st.random_token(32);
    let exp = st.now() + 30.0;
    st.codes.insert(code.clone(), exp);
    st.record("oauth/authorize", "none", 302, false, vec![]);
    let state = q.get("state").cloned().unwrap_or_default();
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let extra = format!(
        "code={}&state={}&domain={}&member_id={}&scope={}&server_domain={}",
        enc(&code),
        enc(&state),
        enc(&st.domain),
        enc(&st.member_id),
        enc(&st.app_scope_text()),
        enc(&st.domain)
    );
    match q.get("redirect_uri") {
        Some(uri) => {
            let sep = if uri.contains('?') { '&' } else { '?' };
            Response::builder()
                .status(302)
                .header(header::LOCATION, format!("{uri}{sep}{extra}"))
                .body(Body::empty())
                .unwrap_or_default()
        }
        None => (StatusCode::OK, axum::Json(json!({"code": code, "state": state, "note": "no redirect_uri: paste this code into your app"}))).into_response(),
    }
}

pub async fn ctl_stats(AxState((shared, _)): AxState<AppState>) -> Response {
    axum::Json(lock(&shared).stats()).into_response()
}

pub async fn ctl_requests(AxState((shared, _)): AxState<AppState>) -> Response {
    axum::Json(lock(&shared).log.clone()).into_response()
}

pub async fn ctl_expire(AxState((shared, _)): AxState<AppState>) -> Response {
    lock(&shared).expire_tokens();
    axum::Json(json!({"ok": true})).into_response()
}

pub async fn ctl_revoke(AxState((shared, _)): AxState<AppState>) -> Response {
    lock(&shared).revoke_tokens();
    axum::Json(json!({"ok": true})).into_response()
}

pub async fn ctl_reset(AxState((shared, _)): AxState<AppState>) -> Response {
    lock(&shared).reset_stats();
    axum::Json(json!({"ok": true})).into_response()
}

pub async fn ctl_faults(AxState((shared, _)): AxState<AppState>, body: String) -> Response {
    match body.parse::<crate::FaultSpec>() {
        Ok(f) => {
            lock(&shared).set_faults(f);
            axum::Json(json!({"ok": true})).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response(),
    }
}

pub async fn ctl_advance(
    AxState((shared, _)): AxState<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let secs: f64 = q.get("secs").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    lock(&shared).clock_offset += secs.max(0.0);
    axum::Json(json!({"ok": true})).into_response()
}
