//! Who may introduce or rotate an `application_token`.
//!
//! An install event is the only moment a portal tells us its token, and anyone can POST
//! one. So a new `member_id` is accepted only when
//!
//! 1. the operator approved the portal it claims to be (`auth[domain]` on the
//!    [`TrustConfig::portals`] list, optionally pinned to a `member_id`), **and**
//! 2. that portal confirms it: `app.info` called on `https://{domain}/rest/` with the event's
//!    `auth[access_token]` answers for an installed app (and, when configured, for our app's
//!    code; when the answer names a `member_id`, it must be the claimed one), **and**
//! 3. the portal is not already recorded for another `member_id`.
//!
//! The address called is the approved host, never a URL from the body, so a forger cannot
//! point the check at a server of their own. Redirects are not followed.

use std::time::Duration;

use serde_json::Value;

/// An operator-approved portal: `HOST`, `*.SUFFIX`, `HOST:*` (any port on that host: the
/// many portals of one local sandbox) or `MEMBER_ID@HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedPortal {
    /// When set, the only `member_id` this portal may install as.
    pub member_id: Option<String>,
    /// Lower-case host (with `:port` if any); `*.example.com` matches any subdomain.
    pub host: String,
}

impl std::str::FromStr for ApprovedPortal {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (member, host) = match s.split_once('@') {
            Some((m, h)) => (Some(m.trim().to_string()), h),
            None => (None, s),
        };
        let host = host.trim().to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let bare = bare.strip_suffix(":*").unwrap_or(bare);
        if !valid_host(bare) || member.as_deref().is_some_and(str::is_empty) {
            return Err(format!(
                "`{s}`: expected HOST, *.SUFFIX or MEMBER_ID@HOST (e.g. a223…@portal.bitrix24.com)"
            ));
        }
        Ok(ApprovedPortal {
            member_id: member,
            host,
        })
    }
}

/// A host name with an optional port: letters, digits, `-`, `.`, `:` only. Rejects anything
/// that could change the URL built from it (`/`, `@`, `?`, `#`, spaces…).
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with(['.', '-', ':'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
}

/// The receiver's trust settings.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Portals whose installs may be accepted (after the portal confirms them).
    pub portals: Vec<ApprovedPortal>,
    /// When set, `app.info`'s `CODE` must equal it (the app's `client_id`).
    pub app_code: Option<String>,
    /// Call loopback portals (`127.0.0.1`, `localhost`, `[::1]`) over plain http (tests, the
    /// local sandbox). Every other portal is called over https.
    pub loopback_http: bool,
    /// Give up on the portal's answer after this long (the install is then refused).
    pub verify_timeout: Duration,
    /// At most this many verifications at once: they are the only outbound calls an
    /// unauthenticated request can cause.
    pub max_concurrent_verifications: usize,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            portals: Vec::new(),
            app_code: None,
            loopback_http: false,
            verify_timeout: Duration::from_secs(10),
            max_concurrent_verifications: 4,
        }
    }
}

impl TrustConfig {
    /// Whether the operator approved `domain` for `member_id`.
    pub fn approves(&self, domain: &str, member_id: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.portals.iter().any(|p| {
            let host_ok = match (p.host.strip_prefix("*."), p.host.strip_suffix(":*")) {
                (Some(suffix), _) => domain
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                (None, Some(host)) => domain.rsplit_once(':').is_some_and(|(h, port)| {
                    h == host && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                }),
                (None, None) => p.host == domain,
            };
            host_ok && p.member_id.as_deref().is_none_or(|m| m == member_id)
        })
    }

    fn base_url(&self, domain: &str) -> String {
        let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        let scheme = if loopback && self.loopback_http {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{domain}/rest/")
    }
}

/// Ask the portal at `domain` whether `access_token` belongs to an install of our app there.
/// `Err` says why not (for the log; never includes the token).
pub async fn confirm_with_portal(
    cfg: &TrustConfig,
    http: &reqwest::Client,
    domain: &str,
    access_token: &str,
    member_id: &str,
) -> std::result::Result<(), String> {
    if !valid_host(domain) {
        return Err("auth[domain] is not a host name".into());
    }
    if access_token.is_empty() {
        return Err("no auth[access_token] to verify with".into());
    }
    let url = format!("{}app.info", cfg.base_url(domain));
    let call = async {
        let resp = http
            .post(&url)
            .form(&[("auth", access_token)])
            .send()
            .await
            .map_err(|e| format!("{domain}: {}", e.without_url()))?;
        let status = resp.status();
        // The answer is small; refuse to buffer more than 64 KB of it.
        if resp.content_length().is_some_and(|n| n > 65_536) {
            return Err(format!("{domain}: app.info answer too large"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{domain}: {}", e.without_url()))?;
        if body.len() > 65_536 {
            return Err(format!("{domain}: app.info answer too large"));
        }
        if !status.is_success() {
            return Err(format!("{domain}: app.info answered HTTP {status}"));
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|_| format!("{domain}: app.info answer is not JSON"))
    };
    let v = tokio::time::timeout(cfg.verify_timeout, call)
        .await
        .map_err(|_| format!("{domain}: app.info did not answer in time"))??;
    let r = v
        .get("result")
        .ok_or_else(|| format!("{domain}: app.info has no result"))?;
    if r.get("INSTALLED") != Some(&Value::Bool(true)) {
        return Err(format!("{domain}: app.info says the app is not installed"));
    }
    if let Some(code) = &cfg.app_code
        && r.get("CODE").and_then(Value::as_str) != Some(code.as_str())
    {
        return Err(format!("{domain}: app.info is for another app"));
    }
    for k in ["member_id", "MEMBER_ID"] {
        if let Some(m) = r.get(k).and_then(Value::as_str)
            && m != member_id
        {
            return Err(format!("{domain}: app.info names another member_id"));
        }
    }
    Ok(())
}

/// The HTTP client for verifications: no redirects (the approved host must answer itself).
/// Installs ring as the default TLS provider first: reqwest has none of its own here and would
/// panic (see `b24::tls::install_default_provider`).
#[allow(clippy::disallowed_methods)] // the provider is installed first
pub fn http_client(cfg: &TrustConfig) -> reqwest::Client {
    b24::tls::install_default_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.verify_timeout)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_rules() {
        let cfg = TrustConfig {
            portals: vec![
                "a.example.com".parse().unwrap(),
                "*.bitrix24.com".parse().unwrap(),
                "m9@pinned.example".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert!(cfg.approves("A.example.com", "m1"));
        assert!(cfg.approves("x.bitrix24.com", "m1"));
        assert!(!cfg.approves("bitrix24.com", "m1"));
        assert!(!cfg.approves("evilbitrix24.com", "m1"));
        assert!(cfg.approves("pinned.example", "m9"));
        let ports = TrustConfig {
            portals: vec!["127.0.0.1:*".parse().unwrap()],
            ..Default::default()
        };
        assert!(ports.approves("127.0.0.1:8080", "m"));
        assert!(!ports.approves("127.0.0.1", "m"));
        assert!(!ports.approves("127.0.0.10:80", "m"));
        assert!(!ports.approves("127.0.0.1:80:1", "m"));
        assert!("127.0.0.1:*/x".parse::<ApprovedPortal>().is_err());
        assert!(!cfg.approves("pinned.example", "m1"));
        assert!(!cfg.approves("b.example.com", "m1"));
        assert!("evil.com/x".parse::<ApprovedPortal>().is_err());
        assert!("u@evil.com@x".parse::<ApprovedPortal>().is_err());
        assert!(!valid_host("a.com@b.com"));
        assert!(valid_host("127.0.0.1:8080"));
        assert_eq!(
            cfg.base_url("127.0.0.1:80"),
            "https://127.0.0.1:80/rest/",
            "plain http only when asked"
        );
    }
}
