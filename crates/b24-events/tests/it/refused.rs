//! Deliveries refused at the door are noted (reason, the claimed event and member, size) so
//! `b24 dlq list --rejected` can show them — never the body or a token — and the notes are
//! bounded: a flood of forged requests writes at most ten rows a second.

use b24_events::listen::ServeLimits;

use crate::receiver::{form, post, serve};

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_noted_without_bodies_or_tokens() {
    let rx = serve(&[], Some("the-pinned-token"), ServeLimits::default()).await;
    let url = &rx.url;
    let ok = form(
        "ONCRMLEADADD",
        "m1",
        "the-pinned-token",
        1,
        "x.bitrix24.com",
        "at-secret",
    );
    assert_eq!(post(url, ok).await, 200);
    let forged = form(
        "ONCRMLEADADD",
        "m1",
        "forged-app-token",
        2,
        "x.bitrix24.com",
        "at-secret",
    );
    assert_eq!(post(url, forged.clone()).await, 401);
    assert_eq!(post(url, "no-auth=1").await, 400);
    assert_eq!(post(url, "a=%zz").await, 400);
    assert_eq!(post(url, "x=".repeat(40_000)).await, 413);
    let inbox = rx.inbox().await;
    let r = inbox.refusals(100).await.unwrap();
    let reasons: Vec<&str> = r.iter().map(|x| x.reason.as_str()).collect();
    // Newest first: over the body limit, a bad encoding (or a body without the fields),
    // no auth fields, a forged token.
    assert_eq!(reasons.len(), 4, "{r:?}");
    assert_eq!(reasons[0], "too_large");
    assert!(
        matches!(reasons[1], "malformed_body" | "missing_fields"),
        "{r:?}"
    );
    assert_eq!(reasons[2], "missing_fields");
    assert_eq!(reasons[3], "invalid_application_token");
    let tok = &r[3];
    assert_eq!(
        (tok.event.as_str(), tok.member_id.as_str()),
        ("ONCRMLEADADD", "m1")
    );
    assert_eq!(tok.bytes as usize, forged.len());
    // No token or body is kept anywhere in the note.
    let all = format!("{r:?}");
    for secret in [
        "forged-app-token",
        "at-secret",
        "the-pinned-token",
        "FIELDS",
    ] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
    // Refused deliveries are not queued; the genuine one is.
    let q = rx.store().await;
    assert_eq!(q.stats().await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_forged_requests_writes_a_bounded_number_of_notes() {
    let rx = serve(&[], Some("pinned"), ServeLimits::default()).await;
    let started = std::time::Instant::now();
    for i in 0..60 {
        let body = form("ONCRMLEADADD", "m1", "forged", i, "x.bitrix24.com", "at");
        assert_eq!(post(&rx.url, body).await, 401);
    }
    let secs = started.elapsed().as_secs() as usize + 1;
    let r = rx.inbox().await.refusals(1000).await.unwrap();
    assert!(r.len() <= 10 * (secs + 1), "{} notes in {secs} s", r.len());
    // What was not written is counted in the notes that were.
    let counted: i64 = r.iter().map(|x| 1 + x.more).sum();
    assert!(
        counted <= 60 && r.len() >= 10,
        "{counted} of 60, {} rows",
        r.len()
    );
}
