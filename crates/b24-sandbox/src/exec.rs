//! Running one v2 method for an authenticated caller: the method and scope checks, the
//! operating-time limit, and the `time` block. Shared by plain calls and batch sub-commands,
//! so a command inside a batch meets exactly the checks it would meet on its own.

use serde_json::{Value, json};

use crate::events::Delivery;
use crate::methods::{self, Caller, Out, PErr, perr};
use crate::params::{get_ci, text};
use crate::state::{State, iso};

/// The `time` object of a response (docs/protocol.md §2.2). `op` is the caller's operating time for
/// the method (used seconds, reset-at) when the limiter is on.
pub fn time_block(start: f64, cost: f64, op: Option<(f64, Option<f64>)>) -> Value {
    let mut t = json!({
        "start": start,
        "finish": start + cost,
        "duration": cost,
        "processing": cost,
        "date_start": iso(start),
        "date_finish": iso(start + cost),
    });
    if let Some((operating, reset)) = op {
        t["operating"] = json!((operating * 1000.0).round() / 1000.0);
        if let Some(r) = reset {
            t["operating_reset_at"] = json!(r.floor() as i64);
        }
    }
    t
}

/// The scopes granted to this caller (`None` = every scope).
pub fn granted_scopes<'a>(st: &'a State, who: &Caller) -> Option<&'a [String]> {
    if who.kind == "webhook" {
        st.cfg.webhook_scopes.as_deref()
    } else {
        st.cfg.app_scopes.as_deref()
    }
}

/// Is the method known, allowed for this kind of auth, and inside the granted scopes?
pub fn access_check(st: &State, who: &Caller, m: &str) -> Result<(), PErr> {
    if m != "batch" && !methods::known(m) {
        return Err(perr(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"));
    }
    if who.kind == "webhook" && methods::app_only(m) {
        return Err(perr(
            403,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method. Application context required",
        ));
    }
    if let Some(scopes) = granted_scopes(st, who) {
        let need = methods::scope_of(m);
        if need != "basic" && !scopes.iter().any(|s| s == need) {
            let what = if who.kind == "webhook" {
                "webhook token"
            } else {
                "access token"
            };
            return Err(perr(
                403,
                "insufficient_scope",
                &format!("The request requires higher privileges than provided by the {what}"),
            ));
        }
    }
    Ok(())
}

/// A method's output with the caller's operating time (used seconds, reset-at) after it ran.
pub type Ran = (Out, Option<(f64, Option<f64>)>);

/// Run one method under the operating-time limit. The call's own `auth_connector` parameter
/// travels with the caller, so the app's own writes skip that connector's offline queue.
///
/// `offset` is when, after the request started, this call begins (a batch command starts when
/// the commands before it have finished). Under realistic timing a call's operating time is
/// counted when it finishes, so calls in flight at once do not see each other.
pub fn run_one(
    st: &mut State,
    who: &Caller,
    m: &str,
    params: &Value,
    dl: &mut Vec<Delivery>,
    offset: f64,
) -> Result<Ran, PErr> {
    let limits = st.cfg.limits;
    let realistic = st.cfg.timing == crate::Timing::Realistic;
    let begin = st.now() + if realistic { offset } else { 0.0 };
    if limits {
        let (used, _) = st.operating_at(&who.cred, m, begin);
        if used > st.cfg.operating_limit_secs {
            st.stats_.operation_time_limit += 1;
            return Err(perr(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit",
            ));
        }
    }
    let connector = get_ci(params, "auth_connector")
        .map(text)
        .unwrap_or_default();
    let mut out = if connector == who.connector {
        methods::call(st, who, m, params, dl)?
    } else {
        let who = Caller {
            connector,
            ..who.clone()
        };
        methods::call(st, &who, m, params, dl)?
    };
    out.cost *= st.cfg.cost_scale;
    *st.stats_.operating_billed.entry(m.to_string()).or_default() += out.cost;
    if !limits {
        return Ok((out, Some((0.0, None))));
    }
    if realistic {
        let end = begin + out.cost;
        st.bill_at(&who.cred, m, out.cost, end);
        let op = st.operating_at(&who.cred, m, end);
        st.note_operating(m, op.0);
        Ok((out, Some(op)))
    } else {
        st.bill(&who.cred, m, out.cost);
        let op = st.operating(&who.cred, m);
        st.note_operating(m, op.0);
        Ok((out, Some(op)))
    }
}
