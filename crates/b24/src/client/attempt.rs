//! One attempt of a call: the request (with same-origin redirects), the answer read and
//! classified into done, retry, refresh, blocked or fail. [`Client::run`](super) owns the
//! retry loop around it.

use std::sync::atomic::Ordering::Relaxed;

use secrecy::ExposeSecret;
use serde_json::Value;

use super::{Attempt, CallOptions, Client, SystemClock, pacing};
use crate::config::Auth;
use crate::envelope::{Parsed, parse};
use crate::error::{ApiError, BoxError};
use crate::limiter::operating::Reservation;
use crate::redirect::{MAX_REDIRECTS, is_redirect, redact_url, redirect_target};
use crate::{Error, ErrorClass};

impl Client {
    #[allow(clippy::too_many_arguments)] // one attempt of `run`, which owns all of these
    pub(super) async fn attempt(
        &self,
        base: &str,
        method: &str,
        params: &Value,
        opts: &CallOptions,
        v3: bool,
        is_write: bool,
        reservation: Option<Reservation>,
    ) -> Attempt {
        let inner = &self.inner;
        let api = if v3 { "rest/api" } else { "rest" };
        let mut body = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params.clone()
        };
        let mut generation = 0;
        let url = match &inner.config.auth {
            Auth::Webhook { user_id, code } => {
                format!(
                    "{base}/{api}/{user_id}/{}/{method}{}",
                    code.expose_secret(),
                    if v3 { "" } else { ".json" }
                )
            }
            Auth::OAuth { .. } => {
                let oauth = inner.oauth.as_ref().expect("oauth session for oauth auth");
                let (g, token) = match oauth.access() {
                    Ok(x) => x,
                    Err(e) => return Attempt::Fail(e),
                };
                if token.is_empty() {
                    return Attempt::Refresh(g);
                }
                generation = g;
                match body.as_object_mut() {
                    Some(o) => {
                        o.insert("auth".into(), Value::String(token));
                    }
                    None => {
                        return Attempt::Fail(Error::Config(
                            "OAuth calls need params to be a JSON object".into(),
                        ));
                    }
                }
                format!("{base}/{api}/{method}{}", if v3 { "" } else { ".json" })
            }
        };
        let mut url = match url::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => {
                return Attempt::Fail(Error::Config(format!(
                    "cannot build the request address for {method}: {e}"
                )));
            }
        };
        // Redirects are followed here, not by reqwest, so that every hop is checked: only the
        // portal's own origin may receive the credentials again (see `redirect_target`).
        let mut hops = 0;
        let resp = loop {
            let mut req = inner
                .http
                .post(url.clone())
                .header("Accept", "application/json")
                .json(&body);
            if let Some(t) = opts.timeout {
                req = req.timeout(t);
            }
            if v3
                && is_write
                && let Some(k) = &opts.idempotency_key
            {
                req = req.header("Idempotency-Key", k);
            }
            inner.counters.requests.fetch_add(1, Relaxed);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return self.send_failed(e, method, is_write, opts),
            };
            let status = resp.status().as_u16();
            if !is_redirect(status) {
                break resp;
            }
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("");
            match redirect_target(base, &url, location) {
                Ok(next) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    tracing::debug!(status, hops, "following a same-origin redirect");
                    url = next;
                }
                Ok(next) => {
                    return Attempt::Fail(Error::Redirect {
                        method: method.into(),
                        status,
                        location: redact_url(next.as_str()),
                        reason: format!("more than {MAX_REDIRECTS} redirects in a row"),
                    });
                }
                Err(reason) => {
                    return Attempt::Fail(Error::Redirect {
                        method: method.into(),
                        status,
                        // Resolved against the request, so a relative or scheme-relative
                        // location still names its host.
                        location: url
                            .join(location)
                            .map(|u| redact_url(u.as_str()))
                            .unwrap_or_else(|_| redact_url(location)),
                        reason: reason.into(),
                    });
                }
            }
        };
        let status = resp.status().as_u16();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let e = e.without_url();
                let what = format!(
                    "the connection broke while reading the answer ({})",
                    root_cause(&e)
                );
                if is_write {
                    return Attempt::Fail(self.unknown(method, &what, opts, Some(Box::new(e))));
                }
                return Attempt::Retry {
                    reason: what,
                    delay: None,
                    source: Some(Box::new(e)),
                };
            }
        };
        match parse(&bytes) {
            Parsed::Ok(mut r) if status < 400 => {
                if let Some(t) = &r.time {
                    // A `time` block without start/finish: measure the reset on our clock.
                    let now = crate::limiter::Clock::now(&SystemClock);
                    let (o, reset) = pacing::observation(t, Some(now));
                    inner.operating.observe(method, reservation, o, reset).await;
                }
                r.replayed = replayed;
                Attempt::Done(r)
            }
            Parsed::Ok(_) => self.garbage(
                method,
                status,
                "a success envelope with an error status",
                None,
                is_write,
                opts,
            ),
            Parsed::Error { code, description } => {
                let err = ApiError {
                    code,
                    description,
                    http_status: status,
                    method: method.into(),
                };
                match err.class() {
                    ErrorClass::RetrySafe => {
                        if status == 503 {
                            inner.counters.s503.fetch_add(1, Relaxed);
                        } else if status == 429 {
                            inner.counters.s429.fetch_add(1, Relaxed);
                        }
                        if let Some(l) = &inner.limiter {
                            let _ = l.fill(&inner.config.portal).await;
                        }
                        Attempt::Retry {
                            reason: format!("{} (HTTP {status})", err.code),
                            delay: None,
                            source: None,
                        }
                    }
                    ErrorClass::WaitForReset => {
                        inner.counters.s429.fetch_add(1, Relaxed);
                        inner.counters.op_blocks.fetch_add(1, Relaxed);
                        if let Err(e) = inner.operating.blocked(method).await {
                            return Attempt::Fail(e);
                        }
                        Attempt::Blocked
                    }
                    ErrorClass::RefreshThenRetry if inner.oauth.is_some() => {
                        Attempt::Refresh(generation)
                    }
                    _ if err.code.eq_ignore_ascii_case("INTERNAL_SERVER_ERROR")
                        || (status >= 500 && err.code.is_empty()) =>
                    {
                        // The portal failed while running the method: it may have executed.
                        if is_write {
                            Attempt::Fail(self.unknown(
                                method,
                                &format!("{} (HTTP {status})", err.code),
                                opts,
                                None,
                            ))
                        } else {
                            Attempt::Retry {
                                reason: format!("{} (HTTP {status})", err.code),
                                delay: None,
                                source: None,
                            }
                        }
                    }
                    _ => Attempt::Fail(Error::Api(err)),
                }
            }
            Parsed::Garbage(what, json) => self.garbage(
                method,
                status,
                &what,
                json.map(|e| Box::new(e) as BoxError),
                is_write,
                opts,
            ),
        }
    }

    /// A request that failed before an answer arrived: retried when it never left or when it
    /// is a read; a write that may have been received ends as outcome unknown.
    fn send_failed(
        &self,
        e: reqwest::Error,
        method: &str,
        is_write: bool,
        opts: &CallOptions,
    ) -> Attempt {
        let e = e.without_url();
        // A failure to connect means the request never left: safe for everyone.
        if e.is_connect() {
            // DNS, TLS, or refused on the very first request: say why now, do not retry.
            let first = self.inner.counters.requests.load(Relaxed) <= 1;
            if let Some(cause) = crate::retry::unhealable(&e, first) {
                return Attempt::Fail(Error::Transient {
                    method: method.into(),
                    reason: format!(
                        "cannot connect to the portal ({}): {cause}; not retried",
                        root_cause(&e)
                    ),
                    attempts: 1,
                    source: Some(Box::new(e)),
                });
            }
            return Attempt::Retry {
                reason: format!("cannot connect to the portal ({})", root_cause(&e)),
                delay: None,
                source: Some(Box::new(e)),
            };
        }
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else {
            format!("connection failed ({})", root_cause(&e))
        };
        if is_write {
            return Attempt::Fail(self.unknown(method, &what, opts, Some(Box::new(e))));
        }
        Attempt::Retry {
            reason: what,
            delay: None,
            source: Some(Box::new(e)),
        }
    }

    /// An answer that is not a Bitrix24 envelope; `json` is the parse error, when the body
    /// was not JSON at all.
    fn garbage(
        &self,
        method: &str,
        status: u16,
        what: &str,
        json: Option<BoxError>,
        is_write: bool,
        opts: &CallOptions,
    ) -> Attempt {
        if status >= 500 {
            let reason = format!("HTTP {status} with {what}");
            if is_write {
                return Attempt::Fail(self.unknown(method, &reason, opts, json));
            }
            return Attempt::Retry {
                reason,
                delay: None,
                source: json,
            };
        }
        Attempt::Fail(Error::Decode {
            method: method.into(),
            reason: format!("HTTP {status} with {what}"),
            source: json,
        })
    }

    fn unknown(
        &self,
        method: &str,
        reason: &str,
        opts: &CallOptions,
        source: Option<BoxError>,
    ) -> Error {
        Error::OutcomeUnknown {
            method: method.into(),
            reason: reason.into(),
            idempotency_key: opts.idempotency_key.clone(),
            source,
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
