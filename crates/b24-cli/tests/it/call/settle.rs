//! Writes whose answer is lost or late, end to end (issue 21): each settles exactly once —
//! in the run itself, in `b24 settle` later, inside `b24 batch`, through MCP, and with many
//! settles racing. Checked in the portal's records and request log.

use crate::support::*;

/// Read the sandbox's data straight from the portal (plain HTTP, not b24): reads are never
/// hit by the counted faults.
async fn portal(sb: &Sandbox, method: &str, params: serde_json::Value) -> serde_json::Value {
    let url = if method.starts_with("tasks.task.") {
        sb.info()
            .webhook_url
            .replacen("/rest/", "/rest/api/", 1)
            .trim_end_matches('/')
            .to_string()
            + "/"
            + method
    } else {
        format!(
            "{}/{method}.json",
            sb.info().webhook_url.trim_end_matches('/')
        )
    };
    let v: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["result"].clone()
}

fn lose_answers(sb: &Sandbox, n: u32) {
    sb.set_faults(b24_sandbox::FaultSpec {
        lose_after_write: n,
        ..Default::default()
    });
}

fn portal_requests(sb: &Sandbox, method: &str) -> Vec<u16> {
    sb.request_log()
        .iter()
        .filter(|r| r.method == method)
        .map(|r| r.status)
        .collect()
}

/// Issue 21: a write whose answer is lost after it ran ends with its real result (exit 0),
/// exactly once — checked in the portal's records and request log.
#[tokio::test(flavor = "multi_thread")]
async fn writes_whose_answer_is_lost_settle_with_exit_0_exactly_once() {
    let sb = sandbox_with_leads(5).await;
    let env = Env::webhook(&sb);
    let tasks = |v: serde_json::Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
    let list = serde_json::json!({"select": ["id"], "pagination": {"limit": 1000}});
    let before = tasks(portal(&sb, "tasks.task.list", list.clone()).await);
    // REST 3.0 add: resent under the key b24 recorded; the portal replays, does not rerun.
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "call",
            "tasks.task.add",
            "--v3",
            "--params",
            r#"{"fields":{"title":"lost answer"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        tasks(portal(&sb, "tasks.task.list", list.clone()).await),
        before + 1
    );
    assert_eq!(portal_requests(&sb, "tasks.task.add"), vec![200, 200]);
    // v2 update: resent.
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "call",
            "crm.lead.update",
            "-p",
            r#"{"id":1,"fields":{"TITLE":"set twice, same effect"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lead = portal(&sb, "crm.lead.get", serde_json::json!({"id": 1})).await;
    assert_eq!(lead["TITLE"], "set twice, same effect");
    assert_eq!(portal_requests(&sb, "crm.lead.update"), vec![200, 200]);
    // v2 delete: resent; the portal's "not found" means it is gone.
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "call",
            "crm.lead.delete",
            "-p",
            r#"{"id":2}"#,
            "--confirm-destructive",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(portal_requests(&sb, "crm.lead.delete"), vec![200, 400]);
    // Stamped add: found by its stamp, not added again.
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "-p",
            r#"{"fields":{"TITLE":"stamped once"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let found = portal(
        &sb,
        "crm.lead.list",
        serde_json::json!({"filter": {"TITLE": "stamped once"}, "select": ["ID", "ORIGIN_ID"]}),
    )
    .await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(
        json(&o),
        serde_json::json!(found[0]["ID"].as_str().unwrap().parse::<u64>().unwrap())
    );
    assert_eq!(portal_requests(&sb, "crm.lead.add"), vec![200]);
    let all = portal(&sb, "crm.lead.list", serde_json::json!({"select": ["ID"]})).await;
    assert_eq!(
        all.as_array().unwrap().len(),
        5,
        "5 seeded - 1 deleted + 1 added"
    );
    // An add b24 cannot stamp (the caller's own ORIGIN_ID) stays outcome-unknown: exit 7.
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "-p",
            r#"{"fields":{"TITLE":"own id","ORIGIN_ID":"crm-77"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert_eq!(
        portal_requests(&sb, "crm.lead.add"),
        vec![200, 200],
        "not resent"
    );
}

/// `b24 settle` resolves a write an earlier run left outcome-unknown, and refuses to act on a
/// log with a forged record.
#[tokio::test(flavor = "multi_thread")]
async fn settle_resolves_what_an_earlier_run_left_unknown() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let list = serde_json::json!({"select": ["id"], "pagination": {"limit": 1000}});
    let count = |v: serde_json::Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
    let before = count(portal(&sb, "tasks.task.list", list.clone()).await);
    // The first answer and both resends are lost.
    lose_answers(&sb, 3);
    let o = env
        .run(&[
            "call",
            "tasks.task.add",
            "--v3",
            "-p",
            r#"{"fields":{"title":"settle me later"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("b24 settle"), "{}", stderr(&o));
    assert_eq!(portal_requests(&sb, "tasks.task.add").len(), 3);
    // Nothing to settle yet for a record that does not exist.
    let o = env.run(&["settle", "no-such-record"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env.run(&["settle"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let line = json(&o);
    assert_eq!(line["status"], "settled", "{line}");
    assert_eq!(line["evidence"]["replayed"], true, "{line}");
    assert_eq!(
        count(portal(&sb, "tasks.task.list", list.clone()).await),
        before + 1,
        "exactly one task"
    );
    assert_eq!(portal_requests(&sb, "tasks.task.add").len(), 4);
    // Settled once: a second run finds nothing to do and sends nothing.
    let o = env.run(&["settle"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(portal_requests(&sb, "tasks.task.add").len(), 4);
    let o = env.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // Another unknown write, then a "settled" record forged into the log: refused, nothing sent.
    lose_answers(&sb, 3);
    let o = env
        .run(&[
            "call",
            "tasks.task.add",
            "--v3",
            "-p",
            r#"{"fields":{"title":"forged"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let o = env.run(&["audit", "path"]).await;
    let path = json(&o)["path"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let forged = serde_json::json!({"v": 2, "seq": last["seq"].as_u64().unwrap() + 1,
        "ts": last["ts"], "decision": "settle", "settles": last["call_id"], "outcome": "settled",
        "prev": last["mac"], "mac": "f".repeat(64)});
    std::fs::write(&path, format!("{text}{forged}\n")).unwrap();
    let sent = portal_requests(&sb, "tasks.task.add").len();
    let o = env.run(&["settle"]).await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("verification"), "{}", stderr(&o));
    assert_eq!(portal_requests(&sb, "tasks.task.add").len(), sent);
}

/// Inside `b24 batch`, each command whose request ended ambiguously is settled on its own.
#[tokio::test(flavor = "multi_thread")]
async fn batch_commands_settle_and_the_batch_exits_0() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    lose_answers(&sb, 1);
    let o = env
        .run(&[
            "batch",
            "--cmd",
            r#"{"key":"a","method":"crm.lead.add","params":{"fields":{"TITLE":"batch stamped"}}}"#,
            "--cmd",
            r#"{"key":"u","method":"crm.lead.update","params":{"id":1,"fields":{"TITLE":"batch set"}}}"#,
            "--cmd",
            r#"{"key":"d","method":"crm.lead.delete","params":{"id":3}}"#,
            "--confirm-write",
            "--confirm-destructive",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let all = portal(
        &sb,
        "crm.lead.list",
        serde_json::json!({"select": ["ID", "TITLE"]}),
    )
    .await;
    let titles: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["TITLE"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles.len(),
        3,
        "3 seeded - 1 deleted + 1 added: {titles:?}"
    );
    assert_eq!(titles.iter().filter(|t| **t == "batch stamped").count(), 1);
    assert!(titles.contains(&"batch set"));
    assert_eq!(portal_requests(&sb, "batch").len(), 1, "never resent whole");
    assert!(
        portal_requests(&sb, "crm.lead.add").is_empty(),
        "the add was found, not resent"
    );
}

/// A held answer (the client times out after the write ran) settles like a lost one; a batch
/// command left unknown by one run is settled by `b24 settle CALL_ID:KEY` in another.
#[tokio::test(flavor = "multi_thread")]
async fn timeouts_settle_and_batch_commands_settle_later() {
    let sb = sandbox_with_leads(2).await;
    let mut env = Env::webhook(&sb);
    env.set("B24_TIMEOUT_SECS", "1");
    let list = serde_json::json!({"select": ["id"], "pagination": {"limit": 1000}});
    let count = |v: serde_json::Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
    let before = count(portal(&sb, "tasks.task.list", list.clone()).await);
    sb.set_faults(b24_sandbox::FaultSpec {
        hold_after_write: 1,
        ..Default::default()
    });
    let o = env
        .run(&[
            "call",
            "tasks.task.add",
            "--v3",
            "-p",
            r#"{"fields":{"title":"held answer"}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        count(portal(&sb, "tasks.task.list", list).await),
        before + 1
    );
    assert_eq!(portal_requests(&sb, "tasks.task.add"), vec![200, 200]);

    // The batch's answer and both resends of its update are lost: the command stays unknown.
    lose_answers(&sb, 3);
    let o = env
        .run(&[
            "batch",
            "--cmd",
            r#"{"key":"u","method":"crm.lead.update","params":{"id":2,"fields":{"TITLE":"later"}}}"#,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}\n{}", stdout(&o), stderr(&o));
    let line = json(&o);
    assert_eq!(line["status"], "unknown", "{line}");
    let reason = line["reason"].as_str().unwrap();
    let target = reason
        .split("b24 settle ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .expect("the reason names what to settle")
        .to_string();
    assert!(target.ends_with(":u"), "{target}");
    let o = env.run(&["settle", &target]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["status"], "settled");
    let lead = portal(&sb, "crm.lead.get", serde_json::json!({"id": 2})).await;
    assert_eq!(lead["TITLE"], "later");
    // The batch once, the update resent twice (lost), then once by `settle`.
    assert_eq!(portal_requests(&sb, "batch").len(), 1);
    assert_eq!(portal_requests(&sb, "crm.lead.update").len(), 3);
}

/// MCP goes through the same gate: a `b24_write` whose answer is lost settles the same way.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_writes_settle_through_the_same_gate() {
    use rmcp::ServiceExt;
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("spawn b24 mcp");
    let client = tokio::time::timeout(std::time::Duration::from_secs(30), ().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize");
    lose_answers(&sb, 1);
    let args = serde_json::json!({"method": "crm.lead.update",
        "params": {"id": 1, "fields": {"TITLE": "via mcp"}}, "confirm": true});
    let serde_json::Value::Object(args) = args else {
        unreachable!()
    };
    let p = rmcp::model::CallToolRequestParams::new("b24_write".to_string()).with_arguments(args);
    let r = client.call_tool(p).await.expect("answered");
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let lead = portal(&sb, "crm.lead.get", serde_json::json!({"id": 1})).await;
    assert_eq!(lead["TITLE"], "via mcp");
    assert_eq!(portal_requests(&sb, "crm.lead.update"), vec![200, 200]);
    let _ = client.cancel().await;
}

/// Hostile: eight `b24 settle` processes at once over the same outcome-unknown writes (a v2
/// update and a REST 3.0 add whose answers and both resends were lost). Each write is resent
/// by exactly one of them: the sandbox sees one more request per write, one task in all.
#[tokio::test(flavor = "multi_thread")]
async fn racing_settles_resend_each_write_once() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let list = serde_json::json!({"select": ["id"], "pagination": {"limit": 1000}});
    let count = |v: serde_json::Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
    let before = count(portal(&sb, "tasks.task.list", list.clone()).await);
    lose_answers(&sb, 6);
    for args in [
        &[
            "call",
            "crm.lead.update",
            "-p",
            r#"{"id":2,"fields":{"TITLE":"raced"}}"#,
            "--confirm-write",
        ][..],
        &[
            "call",
            "tasks.task.add",
            "--v3",
            "-p",
            r#"{"fields":{"title":"raced"}}"#,
            "--confirm-write",
        ][..],
    ] {
        let o = env.run(args).await;
        assert_eq!(code(&o), 7, "{}", stderr(&o));
    }
    assert_eq!(portal_requests(&sb, "crm.lead.update").len(), 3);
    assert_eq!(portal_requests(&sb, "tasks.task.add").len(), 3);
    let runs: Vec<_> = (0..8).map(|_| env.run(&["settle"])).collect();
    let outs = futures::future::join_all(runs).await;
    for o in &outs {
        assert!(matches!(code(o), 0 | 7), "{}", stderr(o));
    }
    assert_eq!(
        portal_requests(&sb, "crm.lead.update").len(),
        4,
        "update resent once"
    );
    assert_eq!(
        portal_requests(&sb, "tasks.task.add").len(),
        4,
        "add resent once"
    );
    assert_eq!(
        count(portal(&sb, "tasks.task.list", list).await),
        before + 1
    );
    // And nothing is left for a ninth.
    let o = env.run(&["settle"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(portal_requests(&sb, "crm.lead.update").len(), 4);
}
