//! MCP client tokens: shared through PostgreSQL when the state store is PostgreSQL (two store
//! handles stand for two `b24 mcp --http` hosts), and a client's policy file refused when a
//! directory above it could be written by another account.

use b24_guard::clients::{TokenError, TokenStore};

fn policy(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("reader.toml");
    std::fs::write(&p, "read_only = true\n").unwrap();
    p
}

/// A token added on one host authenticates on another; revoked on one, it is refused on the
/// other at once (nothing cached), and the name is not reissued on either.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_revocation_are_shared_through_postgres() {
    let Some(url) = b24_test_support::pg_url("b24g", "mcp_tokens").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy(tmp.path());
    // Each host has its own guard dir: the tokens must not come from there.
    let a = TokenStore::open_for(&tmp.path().join("host-a"), Some(&url))
        .await
        .unwrap();
    let b = TokenStore::open_for(&tmp.path().join("host-b"), Some(&url))
        .await
        .unwrap();
    assert!(a.is_shared() && b.is_shared());
    assert!(!tmp.path().join("host-a/guard.db").exists());
    let issued = a.add("reader", &pol).await.unwrap();
    let other = b.add("writer", &pol).await.unwrap();
    let on_b = b.authenticate(&issued.token).await.unwrap();
    assert_eq!(on_b.map(|c| c.name).as_deref(), Some("reader"));
    assert_eq!(
        a.authenticate(&other.token)
            .await
            .unwrap()
            .map(|c| c.name)
            .as_deref(),
        Some("writer")
    );
    assert!(b.authenticate("b24mcp_forged").await.unwrap().is_none());
    let names: Vec<String> = b
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["reader", "writer"]);
    // Revoked on host B: refused on host A at its next request.
    assert!(b.revoke("READER").await.unwrap());
    assert!(a.authenticate(&issued.token).await.unwrap().is_none());
    assert!(b.authenticate(&issued.token).await.unwrap().is_none());
    assert!(a.authenticate(&other.token).await.unwrap().is_some());
    assert!(!a.revoke("reader").await.unwrap(), "already revoked");
    assert!(matches!(
        a.add("reader", &pol).await,
        Err(TokenError::Exists(_))
    ));
    assert!(matches!(
        a.revoke("nobody").await,
        Err(TokenError::NotFound(_))
    ));
    let list = a.list().await.unwrap();
    assert!(list[0].revoked_at.is_some() && list[1].revoked_at.is_none());
    // The secret is not in the table, only its hash.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT hash FROM b24_mcp_tokens", &[])
        .await
        .unwrap();
    for r in rows {
        let h: String = r.get(0);
        assert!(!issued.token.contains(&h) && !h.contains(&issued.token[7..]));
    }
}

/// Without PostgreSQL (no URL, or a SQLite one) the tokens stay in the guard dir; a URL with
/// an unknown scheme is refused rather than read as local.
#[tokio::test]
async fn without_postgres_the_tokens_stay_in_the_guard_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy(tmp.path());
    let guard = tmp.path().join("guard");
    let s = TokenStore::open_for(&guard, Some("/var/lib/b24/queue.db"))
        .await
        .unwrap();
    assert!(!s.is_shared());
    let t = s.add("reader", &pol).await.unwrap();
    let again = TokenStore::open_for(&guard, None).await.unwrap();
    assert!(again.authenticate(&t.token).await.unwrap().is_some());
    assert!(
        TokenStore::open_for(&guard, Some("postgress://x@h/db"))
            .await
            .is_err()
    );
}

/// The policy file's mode is fine (0600), but a directory above it is writable by group or
/// others: anyone who can write there can put another file at the path. Refused when the token
/// is issued and at every call; a sticky world-writable directory (like /tmp) is not refused.
#[cfg(unix)]
#[tokio::test]
async fn a_policy_below_a_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    mode(tmp.path(), 0o700);
    let open = tmp.path().join("shared");
    let inner = open.join("clients");
    std::fs::create_dir_all(&inner).unwrap();
    let pol = inner.join("reader.toml");
    std::fs::write(&pol, "read_only = true\n").unwrap();
    mode(&pol, 0o600);
    mode(&inner, 0o755);
    let s = TokenStore::open(&tmp.path().join("guard")).unwrap();
    for m in [0o777, 0o775, 0o757] {
        mode(&open, m);
        let e = s.add("reader", &pol).await.unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") && e.contains("shared"),
            "{m:o}: {e}"
        );
    }
    // Also through a symlink whose target lies below the writable directory.
    let link = tmp.path().join("link.toml");
    std::os::unix::fs::symlink(&pol, &link).unwrap();
    assert!(s.add("vialink", &link).await.is_err());
    // Sticky, or not writable by others: accepted.
    mode(&open, 0o1777);
    let t = s.add("reader", &pol).await.unwrap();
    let c = s.authenticate(&t.token).await.unwrap().unwrap();
    assert!(c.layer().is_ok());
    // Made writable after the token was issued: the client's calls are refused.
    mode(&open, 0o777);
    let e = c.layer().unwrap_err().to_string();
    assert!(e.contains("writable by group or others"), "{e}");
    mode(&open, 0o755);
    assert!(c.layer().is_ok());
}

/// Hosts starting at once all create the table (the migration waits on an advisory lock
/// instead of racing), and each stays within the guard's share of the process's PostgreSQL
/// budget however many requests it serves at once (`pg_stat_activity`, by `application_name`).
#[tokio::test(flavor = "multi_thread")]
async fn pg_token_pools_migrate_together_and_stay_in_budget() {
    let Some(url) = b24_test_support::pg_url("b24g", "mcp_pool").await else {
        return;
    };
    let app = format!("g{}_mcp_pool", std::process::id());
    let url = format!("{url}&application_name={app}");
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { TokenStore::open_postgres(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("concurrent starts all migrate"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy(tmp.path());
    stores[0].add("reader", &pol).await.unwrap();
    let s = std::sync::Arc::new(stores.remove(0));
    drop(stores);
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.list().await.map(|l| l.len()) })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 1);
    }
    let base = std::env::var("B24_TEST_PG_URL").unwrap();
    let (c, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("{app}:b24-mcp-clients")],
        )
        .await
        .unwrap()
        .get(0);
    drop(c);
    let _ = h.await;
    let share = b24::pg::PoolBudget::default().share(b24::pg::PgRole::Guard) as i64;
    assert!((1..=share).contains(&n), "{n} connections, share {share}");
}
