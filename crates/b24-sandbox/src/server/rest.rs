//! One REST call: route, parameters, faults, then the checks in the portal's order (bucket →
//! faults → auth → method → operating limit), and the v2 response envelope.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::v3::handle_v3;
use super::{AppState, error_response, lock, merge, read_params, spawn_deliveries};
use crate::events::Delivery;
use crate::exec::{access_check, run_one, time_block};
use crate::faults::Fault;
use crate::methods::{Caller, PErr, perr};
use crate::params::{get_ci, parse_query, text};
use crate::state::State;

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

pub(super) enum Reply {
    Json(StatusCode, Value, Vec<(&'static str, String)>),
    Drop,
}

pub(super) async fn rest(
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

pub(super) fn err_reply(st: &mut State, method: &str, auth: &str, v3: bool, e: PErr) -> Reply {
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
