//! `b24 describe` says how a write of the method is settled when its answer is lost (the
//! catalog's settle class, and what changes it) beside its risk class.

use crate::support::*;

async fn describe(method: &str) -> serde_json::Value {
    let o = Env::bare().run(&["describe", method]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    json(&o)
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_shows_the_settle_class_and_the_risk() {
    // (method, risk, v2 class, v3 class, words the explanation must hold)
    let cases = [
        ("crm.lead.add", "write", "stamp", None, "ORIGIN_ID"),
        ("crm.lead.update", "write", "resend", None, "multi-field"),
        (
            "crm.lead.delete",
            "destructive",
            "resend_delete",
            None,
            "not found",
        ),
        (
            "im.message.update",
            "write",
            "unknown",
            None,
            "delivered to the chat",
        ),
        (
            "tasks.task.add",
            "write",
            "unknown",
            Some("replay"),
            "Idempotency-Key",
        ),
        (
            "tasks.task.update",
            "write",
            "resend",
            Some("replay"),
            "Idempotency-Key",
        ),
        ("crm.lead.list", "read", "unknown", None, "a read"),
        ("batch", "read", "unknown", None, "own method's class"),
    ];
    for (m, risk, class, v3, words) in cases {
        let v = describe(m).await;
        assert_eq!(v["risk"], risk, "{m}: {v}");
        let s = &v["settle"];
        assert_eq!(s["class"], class, "{m}: {s}");
        assert_eq!(s["v3"].as_str(), v3, "{m}: {s}");
        let how = s["how"].as_str().unwrap_or_default();
        assert!(how.contains(words), "{m}: {how}");
    }
}
