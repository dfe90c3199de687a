//! `b24 dlq list --rejected`: what the receiver refused — at the door (forged token, too
//! large…) and authenticated bodies it could not represent — each marked with its kind and
//! reason, never with the body or a token.

use b24_events::inbox::Inbox;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn dlq_lists_what_the_receiver_refused_without_secrets() {
    let env = Env::bare();
    std::fs::create_dir_all(env.state_dir()).unwrap();
    let db = env.state_dir().join("queue.db");
    let inbox = Inbox::open(db.to_str().unwrap()).await.unwrap();
    inbox
        .refused("invalid_application_token", "ONCRMLEADADD", "m1", 321, 0)
        .await
        .unwrap();
    inbox.refused("too_large", "", "", 0, 4).await.unwrap();
    let raw = b"event=ONCRMDEALADD&auth%5Bapplication_token%5D=SECRET-APP&auth%5Baccess_token%5D=SECRET-AT&data=%ff";
    inbox
        .reject("online:abc", "m2", "ONCRMDEALADD", "invalid UTF-8", raw)
        .await
        .unwrap();
    // Plain `list` is the dead letters only.
    let o = env.run(&["dlq", "list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "");
    let o = env.run(&["dlq", "list", "--rejected"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0]["kind"], "rejected_at_door");
    assert_eq!(rows[0]["reason"], "too_large");
    assert_eq!(rows[0]["not_noted_before"], 4);
    assert_eq!(rows[1]["reason"], "invalid_application_token");
    assert_eq!(rows[1]["claimed_member_id"], "m1");
    assert_eq!(rows[1]["bytes"], 321);
    assert_eq!(rows[2]["kind"], "unrepresentable");
    assert_eq!(rows[2]["reason"], "invalid UTF-8");
    assert_eq!(rows[2]["bytes"], raw.len());
    for secret in ["SECRET-APP", "SECRET-AT", "auth%5B"] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
}
