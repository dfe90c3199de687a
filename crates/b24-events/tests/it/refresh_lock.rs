//! The per-portal token refresh lock on SQLite is bounded like PostgreSQL's: a process that
//! holds it for ever (hung mid-refresh) makes the next refresh fail with a state error after
//! the same 45 s, instead of freezing it.

use std::time::Duration;

use b24::auth::TokenStore;
use b24_events::installs::Installations;

#[tokio::test(start_paused = true)]
async fn a_sqlite_refresh_lock_held_elsewhere_is_given_up_with_a_state_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.db");
    let reg = Installations::open(db.to_str().unwrap()).await.unwrap();
    let store = reg.token_store("member-held");
    // Another holder: the lock file opened anew is another lock, as another process's is.
    let held = store.lock().await.unwrap();
    let other = reg.token_store("member-other");
    let _free = tokio::time::timeout(Duration::from_secs(1), other.lock())
        .await
        .expect("another portal's lock does not wait")
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = match store.lock().await {
        Ok(_) => panic!("the lock is held: the second taker must not get it"),
        Err(e) => e,
    };
    let waited = start.elapsed();
    assert!(matches!(err, b24::Error::State { .. }), "{err}");
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(text.contains("member-held"), "{text}");
    assert!(
        (Duration::from_secs(45)..Duration::from_secs(46)).contains(&waited),
        "gives up after the PostgreSQL path's 45 s, not before nor much after: {waited:?}"
    );
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(1), store.lock()).await;
    assert!(matches!(again, Ok(Ok(_))), "free again once released");
}
