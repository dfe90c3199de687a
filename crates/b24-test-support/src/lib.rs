//! What the test suites of the b24 crates share. A dev-dependency only: nothing here ships.
// Unused dependencies are a compile error (issue 16): rustc sees every crate this target
// links, so the check costs nothing beyond the build CI already does. Test builds see the
// dev-dependencies too, hence the `not(test)`.
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

/// A URL of the test PostgreSQL server (`B24_TEST_PG_URL`) whose `search_path` is a fresh,
/// empty schema named after `prefix` and `test`, so tests never see each other's tables.
///
/// `None` when `B24_TEST_PG_URL` is not set: the test is skipped and says so on the process's
/// real stderr (the harness captures `eprintln!`, and a skip must show in a plain
/// `cargo test`). With `B24_REQUIRE_PG` set (as `.ci/run` does) a missing URL fails instead.
pub async fn pg_url(prefix: &str, test: &str) -> Option<String> {
    let Ok(base) = std::env::var("B24_TEST_PG_URL") else {
        assert!(
            std::env::var("B24_REQUIRE_PG").is_err(),
            "B24_REQUIRE_PG is set but B24_TEST_PG_URL is not"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("skipped: B24_TEST_PG_URL not set ({test} needs PostgreSQL)\n").as_bytes(),
        );
        return None;
    };
    let schema = format!("{prefix}_{test}_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable at B24_TEST_PG_URL");
    let h = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .expect("create the test schema");
    drop(client);
    let _ = h.await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}
