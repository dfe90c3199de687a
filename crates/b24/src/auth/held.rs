//! The OAuth tokens this process holds, for the redactor.
//!
//! The CLI tells its redactor the secrets of its configuration when it starts
//! (`b24_guard::redact::remember`), but an OAuth pair changes while the process runs: every
//! refresh rotates both tokens, a stored pair newer than the configured one is adopted, a
//! login brings a new one. A token the redactor was never told about is printed as is in a
//! log line or an error. So the auth layer keeps the tokens it holds here, as it obtains
//! them, and the redactor reads them with every message (`b24_guard::redact::text`), without
//! any front end having to wire a callback.
//!
//! Bounded: each [`super::OAuthSession`] keeps its current pair and the one before it (the
//! old access token stays valid for a while after a refresh), and gives them up when it is
//! dropped — a worker serving thousands of portals does not collect every token it ever
//! rotated. Pairs obtained outside a session (a login's code exchange) are kept in a short
//! list of the latest ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use super::TokenPair;

/// Tokens of pairs obtained outside a session that are kept (the latest ones).
const RECENT: usize = 32;

#[derive(Default)]
struct Held {
    /// Per session: its current pair's tokens, then those of the pair before.
    sessions: HashMap<u64, Vec<String>>,
    recent: VecDeque<String>,
    /// Everything above, flattened for readers (rebuilt on change; changes are rare).
    flat: Arc<Vec<String>>,
}

impl Held {
    fn rebuild(&mut self) {
        let mut all: Vec<String> = self.sessions.values().flatten().cloned().collect();
        all.extend(self.recent.iter().cloned());
        all.sort_unstable();
        all.dedup();
        self.flat = Arc::new(all);
    }
}

static HELD: LazyLock<RwLock<Held>> = LazyLock::new(Default::default);
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn tokens(pair: &TokenPair) -> impl Iterator<Item = String> + '_ {
    [&pair.access_token, &pair.refresh_token]
        .into_iter()
        .filter(|t| t.len() >= 4)
        .cloned()
}

/// A new session's slot.
pub(crate) fn new_session() -> u64 {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// `session` now holds `pair`: its tokens are known, with those of the pair it held before.
pub(crate) fn hold(session: u64, pair: &TokenPair) {
    let mut h = HELD.write().unwrap_or_else(|p| p.into_inner());
    let mut now: Vec<String> = tokens(pair).collect();
    if let Some(before) = h.sessions.get(&session) {
        let n = before.len().min(2);
        for t in &before[..n] {
            if !now.contains(t) {
                now.push(t.clone());
            }
        }
    }
    h.sessions.insert(session, now);
    h.rebuild();
}

/// `session` ended: its tokens are no longer kept here (whoever loads them again from the
/// store holds them in a session of its own).
pub(crate) fn release(session: u64) {
    let mut h = HELD.write().unwrap_or_else(|p| p.into_inner());
    if h.sessions.remove(&session).is_some() {
        h.rebuild();
    }
}

/// A pair just obtained from the token endpoint, whoever keeps it afterwards.
pub(crate) fn obtained(pair: &TokenPair) {
    let mut h = HELD.write().unwrap_or_else(|p| p.into_inner());
    for t in tokens(pair) {
        if !h.recent.contains(&t) {
            h.recent.push_back(t);
        }
    }
    while h.recent.len() > RECENT {
        h.recent.pop_front();
    }
    h.rebuild();
}

/// The OAuth tokens this process holds now (see the module doc): for the redactor, which
/// replaces them in every message it passes.
pub fn live_secrets() -> Arc<Vec<String>> {
    HELD.read().unwrap_or_else(|p| p.into_inner()).flat.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_its_pair_and_the_one_before_until_it_ends() {
        let s = new_session();
        let has = |t: &str| live_secrets().iter().any(|x| x == t);
        hold(s, &TokenPair::new("held-access-1", "held-refresh-1"));
        hold(s, &TokenPair::new("held-access-2", "held-refresh-2"));
        hold(s, &TokenPair::new("held-access-3", "held-refresh-3"));
        assert!(has("held-access-3") && has("held-refresh-3"));
        assert!(has("held-access-2"), "the pair before stays known");
        assert!(!has("held-access-1"), "older pairs are let go");
        release(s);
        assert!(!has("held-access-3") && !has("held-access-2"));
        for i in 0..RECENT {
            obtained(&TokenPair::new(
                format!("recent-a-{i}"),
                format!("recent-r-{i}"),
            ));
        }
        assert!(has(&format!("recent-a-{}", RECENT - 1)));
        assert!(!has("recent-a-0"), "the recent list is bounded");
    }
}
