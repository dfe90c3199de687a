//! The audit log through the gate: refusals keep personal data out, secrets the caller hands
//! in never reach it, and reads wait for it unless the operator allows unaudited reads.
//!
//! A module of `tests/it/gate.rs`, so it uses its helpers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn refusals_keep_personal_data_out_of_the_audit_log() {
    let sb = sandbox().await;
    let w = World::new();
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // Not confirmed: refused, and recorded. The default audit keeps keys and digests only.
    let req = CallRequest {
        method: "crm.lead.add".into(),
        params: json!({"fields": {"NAME": "Privatus Personname", "PHONE": [{"VALUE": "+49 170 5550123"}]}}),
        ..Default::default()
    };
    let e = gate.call(req, &NoPerson).await.expect_err("unconfirmed");
    assert!(e.refusal().is_some());
    let log = std::fs::read_to_string(gate.audit_log().path()).unwrap_or_default();
    assert!(!log.is_empty(), "the refusal is recorded");
    assert!(
        !log.contains("Privatus") && !log.contains("5550123"),
        "HOLE: the refusal's `fix` (b24 plan … --params '<params>') copies the params into the \
         audit log although audit_params is `keys`: {log}"
    );
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_handed_in_by_the_caller_never_reach_the_audit_log() {
    let sb = sandbox().await;
    let w = World::new();
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let code = sb.info().webhook_code.clone();
    let mut failures = Vec::new();
    for (what, method, params) in [
        (
            "the webhook URL as a method name (malformed)",
            format!("{}crm.lead.list", sb.info().webhook_url),
            json!({}),
        ),
        (
            "the webhook code in a refused write's params",
            "crm.lead.add".to_string(),
            json!({"fields": {"COMMENTS": code}}),
        ),
        (
            "the webhook code in a refused raw batch command",
            "batch".to_string(),
            json!({"cmd": {"a": format!("crm.lead.add?x={code}&y=%")}, "halt": code}),
        ),
    ] {
        let req = CallRequest {
            method: method.clone(),
            params: params.clone(),
            ..Default::default()
        };
        let seen = std::fs::read_to_string(gate.audit_log().path())
            .unwrap_or_default()
            .lines()
            .count();
        let e = gate.call(req, &NoPerson).await.expect_err(what);
        let shown = gate.redact_text(&e.to_string());
        assert!(!shown.contains(&code), "{what}: the message {shown}");
        let log = std::fs::read_to_string(gate.audit_log().path()).unwrap_or_default();
        if let Some(line) = log.lines().skip(seen).find(|l| l.contains(&code)) {
            failures.push(format!("{what}: `{method}` {params} → audit record {line}"));
        }
    }
    assert_eq!(sb.stats().requests, 0);
    assert!(
        failures.is_empty(),
        "HOLE(s): the webhook code is written to the audit log:\n{}",
        failures.join("\n")
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_wait_for_an_audit_log_unless_the_operator_allows_unaudited_reads() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"crm.deal.*\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // The log cannot take records: its path is a directory.
    std::fs::create_dir_all(gate.audit_log().path()).unwrap();
    let read = || CallRequest {
        method: "crm.lead.list".into(),
        params: json!({}),
        ..Default::default()
    };
    let e = gate
        .call(read(), &NoPerson)
        .await
        .expect_err("unrecorded read");
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    let write = confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}}));
    let e = gate
        .call(write, &NoPerson)
        .await
        .expect_err("unrecorded write");
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(sb.stats().requests, 0, "nothing reached the portal");
    w.system("allow_unaudited_reads = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    assert!(gate.call(read(), &NoPerson).await.is_ok());
    let write = confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}}));
    assert!(
        gate.call(write, &NoPerson).await.is_err(),
        "writes never go unrecorded"
    );
    assert_eq!(calls(&sb, "crm.lead.list"), 1);
    assert_eq!(calls(&sb, "crm.lead.add"), 0);
}
