//! The token file's refresh lock is bounded like PostgreSQL's (`b24::pg::TOKEN_LOCK_WAIT`): a
//! process holding it for ever fails the next refresh with a state error after 45 s instead
//! of freezing it.

use std::time::Duration;

use b24::auth::{FileTokenStore, TokenStore};

#[tokio::test(start_paused = true)]
async fn a_token_file_lock_held_elsewhere_is_given_up_with_a_state_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileTokenStore::new(dir.path().join("tokens.json"));
    // Another holder: its own open of the lock file, as another process's.
    let held = store.lock_blocking().unwrap();
    let start = tokio::time::Instant::now();
    let err = match TokenStore::lock(&store).await {
        Ok(_) => panic!("the lock is held: the second taker must not get it"),
        Err(e) => e,
    };
    let waited = start.elapsed();
    assert!(matches!(err, b24::Error::State { .. }), "{err}");
    assert!(
        (b24::pg::TOKEN_LOCK_WAIT..b24::pg::TOKEN_LOCK_WAIT + Duration::from_secs(1))
            .contains(&waited),
        "gives up after the PostgreSQL store's bound: {waited:?}"
    );
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(1), TokenStore::lock(&store)).await;
    assert!(matches!(again, Ok(Ok(_))), "free again once released");
}
