//! Retry policy: exponential backoff with full jitter, bounded attempts and total time.
//!
//! What is retried is decided by [`crate::client`] from the error class; this module only says
//! how long to wait. A write whose outcome is unknown is never handed to the retry loop.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Seconds (from a portal answer, a stored state or arithmetic on them) as a `Duration`:
/// NaN and negatives are zero, anything beyond a day is a day. `Duration::from_secs_f64`
/// panics on such input; these values come from outside and must not.
pub fn clamp_secs(secs: f64) -> Duration {
    const DAY: f64 = 86_400.0;
    if secs.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(secs.clamp(0.0, DAY))
}

/// Bounds for one call's retries.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Wall-clock budget for the call, waits included.
    pub max_total: Duration,
    /// Cap of the first retry's delay; each later retry doubles it.
    pub base_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// Seed for the jitter (tests); `None` = from entropy.
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_total: Duration::from_secs(180),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
            seed: None,
        }
    }
}

/// Produces the delays of one call's retries.
pub struct Backoff {
    policy: RetryPolicy,
    rng: StdRng,
}

impl Backoff {
    /// The delays of one call under `policy`.
    pub fn new(policy: &RetryPolicy) -> Backoff {
        let rng = match policy.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Backoff {
            policy: policy.clone(),
            rng,
        }
    }

    /// Delay before retry number `attempt` (1 = first retry): uniform in
    /// `[cap/2, cap]` with `cap = min(max_delay, base * 2^(attempt-1))` — "equal jitter", so
    /// that many clients that failed together spread out but none retries immediately.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self
            .policy
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_delay);
        let half = cap / 2;
        let jitter = self.rng.random_range(0.0..=1.0);
        half + half.mul_f64(jitter)
    }
}

/// A connection failure that will not heal within a call's retry budget, and its likely cause:
/// the host name does not resolve, TLS fails (a certificate for another name, an untrusted one,
/// or https spoken to a plain-http port), or — on the client's first request — the connection
/// is refused (nothing listens at that address). Retrying these for ~24 s only delays the
/// message the person needs; a refusal later on (a portal restarting) is still retried.
pub(crate) fn unhealable(
    e: &(dyn std::error::Error + 'static),
    first_request: bool,
) -> Option<String> {
    let mut text = String::new();
    let mut refused = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            refused = true;
        }
        text.push_str(&c.to_string().to_ascii_lowercase());
        text.push('\n');
        cur = c.source();
    }
    let dns = [
        "dns error",
        "failed to lookup address",
        "name or service not known",
        "no address associated",
        "nodename nor servname",
        "no such host",
        "temporary failure in name resolution",
    ];
    if dns.iter().any(|m| text.contains(m)) {
        return Some("the portal's host name does not resolve (DNS): check the domain in B24_WEBHOOK_URL / B24_DOMAIN for a typo, and this machine's DNS".into());
    }
    let tls = [
        "certificate",
        "tls",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
        "peer misbehaved",
        "unknownissuer",
        "notvalidforname",
    ];
    if tls.iter().any(|m| text.contains(m)) {
        return Some("the TLS handshake failed: the portal's certificate is for another name or not trusted, a proxy intercepts TLS, or the address speaks plain http; b24 never turns certificate checks off".into());
    }
    if first_request && (refused || text.contains("connection refused")) {
        return Some("the connection was refused: nothing listens at that address and port; check the portal address (https uses port 443)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_capped() {
        let p = RetryPolicy {
            seed: Some(7),
            ..Default::default()
        };
        let mut b = Backoff::new(&p);
        let d: Vec<Duration> = (1..=12).map(|a| b.delay(a)).collect();
        for (i, x) in d.iter().enumerate() {
            let cap = p.base_delay.saturating_mul(1 << i.min(30)).min(p.max_delay);
            assert!(
                *x >= cap / 2 && *x <= cap,
                "attempt {} delay {:?} cap {:?}",
                i + 1,
                x,
                cap
            );
        }
        assert!(d[11] <= p.max_delay);
        // Same seed, same delays: tests are reproducible.
        let mut b2 = Backoff::new(&p);
        assert_eq!(d, (1..=12).map(|a| b2.delay(a)).collect::<Vec<_>>());
    }
}
