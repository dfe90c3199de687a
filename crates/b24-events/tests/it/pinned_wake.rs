//! A receiver with a pinned application token authenticates the token, not the member id
//! the body names: anyone sending with the pinned token may name any member. So its
//! `ONOFFLINEEVENT` must not be recorded on an installed portal's registry row (another
//! portal's, registered by an unpinned receiver on the same store): it stays queued, as
//! before wake-ups moved to the registry.

use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_sandbox::{SandboxConfig, start_many};

use crate::receiver::{Rx, form, post, serve, serve_at};

const PINNED: &str = "pinned-token-of-another-portal";

/// One portal installed through an app's receiver, and a receiver pinned to another token on
/// the same store.
async fn installed_and_pinned() -> (b24_sandbox::Portals, Rx, Rx, Installations) {
    let ps = start_many(
        SandboxConfig {
            limits: false,
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    let rx = serve(&["127.0.0.1:*"], None, ServeLimits::default()).await;
    assert_eq!(ps.get(0).unwrap().install_app(&rx.url).await.status, 200);
    let reg = Installations::open(&rx.db).await.unwrap();
    let rx2 = serve_at(
        rx.db.clone(),
        tempfile::tempdir().unwrap(),
        &[],
        Some(PINNED),
        ServeLimits::default(),
    )
    .await;
    (ps, rx, rx2, reg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_receiver_does_not_wake_another_installed_portal() {
    let (ps, rx, rx2, reg) = installed_and_pinned().await;
    let member = ps.get(0).unwrap().info().member_id.clone();
    let before = reg.find(&member).await.unwrap().expect("installed").wake_at;
    let pinned = PINNED;
    let queued_before = rx.store().await.stats().await.unwrap().ready;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let body = form("ONOFFLINEEVENT", &member, pinned, 1, "evil.example", "");
    assert_eq!(post(&rx2.url, body).await, 200);
    let after = reg.find(&member).await.unwrap().expect("installed").wake_at;
    assert_eq!(
        after, before,
        "the installed portal's row was woken by a pinned sender"
    );
    assert_eq!(
        rx.store().await.stats().await.unwrap().ready,
        queued_before + 1,
        "the pinned receiver's wake-up is queued, as before"
    );
}

/// The same sender, with `ONAPPINSTALL` and `ONAPPUNINSTALL` naming the installed portal:
/// before, the first overwrote that portal's stored application token with the pinned one (so
/// the app's receiver then took forged events signed with it) and the second ended its
/// installation. Now neither touches another member's token or row.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_receiver_cannot_take_over_or_end_another_installed_portal() {
    let (ps, rx, rx2, reg) = installed_and_pinned().await;
    let p = ps.get(0).unwrap();
    let (member, domain) = (p.info().member_id.clone(), p.info().domain.clone());
    let pinned = PINNED;
    for event in ["ONAPPINSTALL", "ONAPPUPDATE", "ONAPPUNINSTALL"] {
        let body = form(event, &member, pinned, 1, "evil.example", "");
        assert_eq!(post(&rx2.url, body).await, 200, "{event}");
    }
    let row = reg.find(&member).await.unwrap().expect("still recorded");
    assert!(row.is_installed(), "the pinned sender ended it: {row:?}");
    assert!(row.pair.is_some(), "its tokens are kept");
    // The app's receiver still takes only the portal's own token, not the pinned one.
    let forged = form("ONCRMLEADADD", &member, pinned, 7, &domain, "");
    assert_eq!(post(&rx.url, forged).await, 401);
    let genuine = form(
        "ONCRMLEADADD",
        &member,
        &p.info().application_token,
        8,
        &domain,
        "",
    );
    assert_eq!(post(&rx.url, genuine).await, 200);
    ps.shutdown().await;
}
