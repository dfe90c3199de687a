//! The online receiver: verified events are committed before 200; nothing else is stored.

use b24_events::Store;

async fn serve() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("q.db").to_str().unwrap())
        .await
        .unwrap();
    let app = b24_events::receiver::router(
        store,
        b24_events::receiver::ReceiverConfig {
            max_body: 4096,
            pinned_token: None,
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/"), dir)
}

fn form(event: &str, member: &str, token: &str, id: usize) -> String {
    format!(
        "event={event}&data%5BFIELDS%5D%5BID%5D={id}&ts=1700000000&auth%5Bmember_id%5D={member}&auth%5Bapplication_token%5D={token}&auth%5Baccess_token%5D=secret-at"
    )
}

async fn post(url: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_learned_checked_and_rotated() {
    let (url, dir) = serve().await;
    // Unknown portal: only an install can introduce a token.
    assert_eq!(post(&url, form("ONCRMLEADADD", "m1", "tok1", 1)).await, 401);
    assert_eq!(post(&url, form("ONAPPINSTALL", "m1", "tok1", 0)).await, 200);
    assert_eq!(post(&url, form("ONCRMLEADADD", "m1", "tok1", 1)).await, 200);
    assert_eq!(
        post(&url, form("ONCRMLEADADD", "m1", "forged", 2)).await,
        401
    );
    assert_eq!(
        post(&url, form("ONAPPINSTALL", "m1", "attacker", 0)).await,
        401,
        "a re-install must match"
    );
    assert_eq!(post(&url, form("ONAPPUPDATE", "m1", "tok2", 0)).await, 200);
    assert_eq!(
        post(&url, form("ONCRMLEADADD", "m1", "tok1", 3)).await,
        401,
        "the old token is gone"
    );
    assert_eq!(post(&url, form("ONCRMLEADADD", "m1", "tok2", 3)).await, 200);
    assert_eq!(post(&url, "event=ONCRMLEADADD&data%5B=1".into()).await, 400);
    assert_eq!(post(&url, "no-auth=1".into()).await, 400);
    assert_eq!(post(&url, "a=%zz".into()).await, 400);
    assert_eq!(
        post(
            &url,
            form("ONCRMLEADADD", "m1", "tok2", 4) + &"&x=".repeat(2000)
        )
        .await,
        413
    );
    // Duplicates (same event, data and ts) are stored once.
    assert_eq!(post(&url, form("ONCRMLEADADD", "m1", "tok2", 3)).await, 200);
    let q = Store::open(dir.path().join("q.db").to_str().unwrap())
        .await
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!(
        s.ready, 4,
        "install, add 1, update, add 3 (its duplicate is not stored): {s:?}"
    );
    let jobs = q.claim("t", 10, 10.0).await.unwrap();
    for j in &jobs {
        assert_eq!(
            j.payload["auth"]["access_token"], "[redacted]",
            "tokens are not kept in the queue"
        );
    }
}
