//! The live checks of `b24 doctor`: reachability and auth (`user.current`), scopes, clock
//! skew, the methods asked for with `--method` (through the gate, reads only) and the limiter.

use serde_json::json;

use super::diagnose::api_finding;
use super::{Args, Report, Status};
use crate::globals::Globals;

pub(super) async fn probe(
    cfg: &b24::Config,
    webhook: bool,
    args: &Args,
    g: &Globals,
    r: &mut Report,
) {
    let client = match g.client().await {
        Ok(c) => c,
        Err(e) => {
            r.add("client", Status::Fail, e.to_string(), None);
            return;
        }
    };
    // Reachability and auth together: `user.current` needs only the basic scope.
    let t0 = std::time::Instant::now();
    match client.call("user.current", json!({})).await {
        Ok(resp) => {
            let who = resp
                .result
                .get("ID")
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default();
            r.add(
                "reachability",
                Status::Ok,
                format!(
                    "{} answered in {} ms",
                    cfg.base_url,
                    t0.elapsed().as_millis()
                ),
                None,
            );
            r.add(
                "auth",
                Status::Ok,
                format!("authenticated as user {who}"),
                None,
            );
        }
        Err(e) => {
            match &e {
                b24::Error::Api(_) => {
                    r.add(
                        "reachability",
                        Status::Ok,
                        format!("{} answered", cfg.base_url),
                        None,
                    );
                    api_finding(r, "auth", &e, webhook);
                }
                b24::Error::Auth { .. } | b24::Error::Config(_) => {
                    api_finding(r, "auth", &e, webhook)
                }
                _ => api_finding(r, "reachability", &e, webhook),
            }
            return;
        }
    }
    match client.call("scope", json!({})).await {
        Ok(resp) => {
            let scopes: Vec<String> = resp
                .result
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if scopes.iter().any(|s| s == "crm") {
                r.add("scopes", Status::Ok, scopes.join(","), None);
            } else {
                r.add(
                    "scopes",
                    Status::Warn,
                    format!("no `crm` scope ({})", scopes.join(",")),
                    Some("add the crm scope to the webhook/app if you work with CRM".into()),
                );
            }
        }
        Err(e) => api_finding(r, "scopes", &e, webhook),
    }
    match client.call("server.time", json!({})).await {
        Ok(resp) => {
            let s = resp.result.as_str().unwrap_or_default().to_string();
            let parsed = s
                .parse::<jiff::Timestamp>()
                .ok()
                .or_else(|| s.parse::<jiff::Zoned>().ok().map(|z| z.timestamp()));
            match parsed {
                Some(ts) => {
                    let skew = (jiff::Timestamp::now().as_second() - ts.as_second()).abs();
                    if skew > 60 {
                        r.add(
                            "clock",
                            Status::Warn,
                            format!("local clock differs from the portal's by {skew} s"),
                            Some(
                                "sync the clock (NTP); token expiry and audit times depend on it"
                                    .into(),
                            ),
                        );
                    } else {
                        r.add("clock", Status::Ok, format!("skew {skew} s"), None);
                    }
                }
                None => r.add(
                    "clock",
                    Status::Warn,
                    format!("cannot parse server.time `{s}`"),
                    None,
                ),
            }
        }
        Err(e) => api_finding(r, "clock", &e, webhook),
    }
    // Methods to try go through the gate like any call: reads only, policy, audit.
    let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli);
    for m in &args.method {
        let req = b24_guard::gate::CallRequest {
            method: m.clone(),
            params: json!({}),
            reads_only: true,
            ..Default::default()
        };
        let res = match &gate {
            Ok(gate) => gate.call(req, &b24_guard::gate::NoPerson).await,
            Err(e) => {
                r.add(
                    &format!("method {m}"),
                    Status::Fail,
                    crate::exit::chain_text(e),
                    None,
                );
                continue;
            }
        };
        match res {
            Ok(_) => r.add(&format!("method {m}"), Status::Ok, "works", None),
            Err(b24_guard::gate::GateError::Client(e)) => {
                api_finding(r, &format!("method {m}"), &e, webhook)
            }
            Err(e) => r.add(
                &format!("method {m}"),
                Status::Fail,
                e.to_string(),
                Some("doctor only tries read-only methods the policy allows".into()),
            ),
        }
    }
    let st = client.stats();
    r.add(
        "limiter",
        Status::Ok,
        format!(
            "{:?} limiter, burst {} at {}/s; this run: {} requests, {} limiter waits, {} retries, {} HTTP 503",
            cfg.limiter, cfg.limits.burst, cfg.limits.per_sec, st.requests, st.limiter_waits, st.retries, st.status_503
        ),
        None,
    );
}
