//! Which redirects a call may follow: only back to the portal's own origin.
//!
//! reqwest's own redirect handling is off; the client follows hops itself and asks
//! [`redirect_target`] about each, because the credentials travel with the request (the webhook
//! code in the path, the OAuth token in the body) and must never reach another origin.

/// Same-origin redirects followed in a row before giving up.
pub(crate) const MAX_REDIRECTS: u32 = 5;

/// The statuses that carry a `Location` to follow (304 is a cache answer, not a redirect).
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect from `current` to `location` may be followed, or why not.
///
/// The webhook code travels in the path and the OAuth token in the body, so a hop may only
/// go back to the portal's own origin (scheme, host and port of `base`), which also rules out
/// a downgrade from https to http. Plain http stays allowed only where the configuration
/// allows it: loopback addresses, for tests and the sandbox.
pub(crate) fn redirect_target(
    base: &str,
    current: &url::Url,
    location: &str,
) -> Result<url::Url, &'static str> {
    if location.is_empty() {
        return Err("the redirect has no Location");
    }
    let next = current
        .join(location)
        .map_err(|_| "the Location is not a valid address")?;
    let base = url::Url::parse(base).map_err(|_| "the portal address is not a valid URL")?;
    let secure = match next.scheme() {
        "https" => true,
        "http" => next
            .host_str()
            .map(crate::config::is_loopback_host)
            .unwrap_or(false),
        _ => false,
    };
    if base.scheme() == "https" && next.scheme() != "https" {
        return Err("it would downgrade https to plain http");
    }
    if next.origin() != base.origin() {
        return Err("it leads to another origin, which must not receive the credentials");
    }
    if !secure {
        return Err("plain http is allowed only to loopback addresses");
    }
    Ok(next)
}

/// Keep only the scheme, host and port of a URL: the path may hold a webhook code and the
/// query a token.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => format!("{}:…", u.scheme()),
        },
        // A relative location names no other host; show nothing of its path.
        Err(_) if !url.is_empty() => "(a relative or unparsable location)".into(),
        Err(_) => "(no location)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets() {
        let base = "https://ex.bitrix24.com";
        let cur = url::Url::parse("https://ex.bitrix24.com/rest/1/code/m.json").unwrap();
        // Same origin, explicit default port, relative path: followed.
        for ok in [
            "https://ex.bitrix24.com/rest/1/code/m.json/",
            "https://ex.bitrix24.com:443/x",
            "/rest/1/code/other.json",
            "m2.json",
        ] {
            assert!(redirect_target(base, &cur, ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://ex.bitrix24.com/rest/1/code/m.json", "downgrade"),
            ("https://evil.example/rest/1/code/m.json", "another origin"),
            ("//evil.example/x", "another origin"),
            ("https://ex.bitrix24.com:8443/x", "another origin"),
            ("https://ex.bitrix24.com.evil.example/x", "another origin"),
            ("ftp://ex.bitrix24.com/x", "downgrade"),
            ("", "no Location"),
        ] {
            let e = redirect_target(base, &cur, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            redact_url("https://evil.example:8443/rest/1/secret/m.json?auth=tok"),
            "https://evil.example:8443/…"
        );
        assert!(!redact_url("/rest/1/secret/").contains("secret"));
    }
}
