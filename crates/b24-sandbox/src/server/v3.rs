//! REST 3.0 calls (`/rest/api/…`) after authentication: the method table and the
//! `Idempotency-Key` store (first successful answer kept 24 h and replayed).

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::rest::{Reply, err_reply};
use crate::exec::time_block;
use crate::methods::{Caller, perr};
use crate::state::State;

pub(super) fn handle_v3(
    st: &mut State,
    who: &Caller,
    m: &str,
    params: &Value,
    idem: Option<String>,
) -> Reply {
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
