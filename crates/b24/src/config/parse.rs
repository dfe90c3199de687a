//! Parsing and checking of single settings: store URLs, numbers within bounds, webhook URLs
//! and codes, portal addresses. Kept apart from [`Config::from_lookup`](super::Config), which
//! decides precedence and defaults, so that each rule here can be read (and tested) alone.

use std::net::IpAddr;

use secrecy::SecretString;

use super::Auth;
use crate::Error;

/// What a `B24_STORE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// `postgres://…` or `postgresql://…`: a shared database (a cluster).
    Postgres,
    /// `sqlite:PATH`, `sqlite://PATH` or a plain file path: a local file.
    Sqlite,
}

/// Classify a store URL, refusing a scheme that is neither PostgreSQL nor SQLite (for
/// example a misspelt `postgress://`), which would otherwise be taken for a file name.
/// Every reader of `B24_STORE_URL` should go through this so that they agree.
pub fn store_kind(url: &str) -> Result<StoreKind, Error> {
    let url = url.trim();
    let Some((scheme, _)) = url.split_once(':') else {
        return Ok(StoreKind::Sqlite);
    };
    let scheme = scheme.to_ascii_lowercase();
    let looks_like_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    match scheme.as_str() {
        "postgres" | "postgresql" if url[scheme.len()..].starts_with("://") => {
            Ok(StoreKind::Postgres)
        }
        "sqlite" => Ok(StoreKind::Sqlite),
        // `C:\path` on Windows: a drive letter, not a scheme.
        s if s.len() == 1 => Ok(StoreKind::Sqlite),
        _ if looks_like_scheme || url.contains("://") => Err(Error::Config(format!(
            "B24_STORE_URL has an unknown scheme `{scheme}:`; use postgres://… (or \
             postgresql://…) for a shared database, or sqlite:PATH / a file path for a local one"
        ))),
        _ => Ok(StoreKind::Sqlite),
    }
}

/// Upper bounds of the numeric settings: far above any sensible value, low enough that no
/// arithmetic on them (durations, attempt counts) can overflow.
pub(super) const MAX_RETRIES: f64 = 1000.0;
/// One day.
pub(super) const MAX_RETRY_BUDGET_SECS: f64 = 86_400.0;
/// One hour (the portal itself cuts a request off after 60 s).
pub(super) const MAX_TIMEOUT_SECS: f64 = 3_600.0;
/// Largest bucket or rate accepted (requests, requests per second).
pub(super) const MAX_RATE: f64 = 1e9;

/// A finite number within `[lo, hi]`, or a configuration error naming the setting.
pub(super) fn parse_in(v: &str, name: &str, lo: f64, hi: f64) -> Result<f64, Error> {
    let x = parse_num(v, name)?;
    if x < lo || x > hi {
        return Err(Error::Config(format!(
            "{name} must be between {lo} and {hi}, not `{v}`"
        )));
    }
    Ok(x)
}

fn parse_num(v: &str, name: &str) -> Result<f64, Error> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Error::Config(format!("{name} must be a number, not `{v}`")))
}

/// A webhook code must not carry the `user_id/` prefix (a common copy-paste mistake).
pub(super) fn check_code(user_id: &str, code: &str) -> Result<String, Error> {
    let code = code.trim_matches('/');
    if code.contains('/') {
        let (first, _) = code.split_once('/').unwrap_or_default();
        return Err(Error::Config(format!(
            "B24_WEBHOOK_CODE contains a `/`: it looks like `<user_id>/<code>` (prefix `{first}/`). \
             Put only the code part in B24_WEBHOOK_CODE and the user id ({user_id}) in B24_WEBHOOK_USER_ID, \
             or set the whole URL in B24_WEBHOOK_URL"
        )));
    }
    Ok(code.to_string())
}

/// Whether a host is a loopback address, where plain http is allowed.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

pub(crate) fn check_scheme(url: &str) -> Result<url::Url, Error> {
    let u = url::Url::parse(url).map_err(|e| Error::Config(format!("invalid URL: {e}")))?;
    match u.scheme() {
        "https" => Ok(u),
        "http" if u.host_str().map(is_loopback_host).unwrap_or(false) => Ok(u),
        "http" => Err(Error::Config(format!(
            "refusing plain http:// to {}: secrets would travel in clear text; use https:// \
             (plain http is allowed only to loopback addresses)",
            u.host_str().unwrap_or("?")
        ))),
        s => Err(Error::Config(format!("unsupported URL scheme `{s}`"))),
    }
}

/// `example.bitrix24.com`, `https://example.bitrix24.com/`, `http://127.0.0.1:8080` → base, key.
pub(super) fn parse_base(domain: &str) -> Result<(String, String), Error> {
    let with_scheme = if domain.contains("://") {
        domain.to_string()
    } else {
        format!("https://{domain}")
    };
    let u = check_scheme(&with_scheme)?;
    let host = u
        .host_str()
        .ok_or_else(|| Error::Config("portal address has no host".into()))?;
    let portal = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok((format!("{}://{}", u.scheme(), portal), portal))
}

/// Split an incoming-webhook URL `https://host/rest/{user}/{code}/[method]`.
pub(super) fn parse_webhook_url(url: &str) -> Result<(String, String, Auth), Error> {
    let u = check_scheme(url).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("B24_WEBHOOK_URL: {m}")),
        other => other,
    })?;
    let (base, portal) = parse_base(&format!("{}://{}", u.scheme(), &url_authority(&u)))?;
    let segs: Vec<&str> = u
        .path_segments()
        .map(|s| s.filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    match segs.as_slice() {
        ["rest", user, code, ..] if user.chars().all(|c| c.is_ascii_digit()) => Ok((
            base,
            portal,
            Auth::Webhook { user_id: user.to_string(), code: SecretString::from(code.to_string()) },
        )),
        _ => Err(Error::Config(
            "B24_WEBHOOK_URL must look like https://<portal>/rest/<user_id>/<code>/ — the URL given \
             seems cut short or malformed (the path needs /rest/, a numeric user id and the code)"
                .into(),
        )),
    }
}

fn url_authority(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
