//! Spellings: a denied method name in every spelling and a batch hiding it under every key
//! form, sent through `b24 call` and `b24_write`, through `b24 batch` and `b24_batch`, and as
//! plans.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

/// A call attempt through both front ends: `b24 call` with both confirmation flags, and
/// b24_write with both confirmations (the model confirms everything it can).
struct CallCase {
    name: &'static str,
    method: String,
    params: Value,
    /// Expected exit code of the CLI (2 malformed, 4 refused).
    code: i32,
}

fn c(name: &'static str, method: &str, params: Value, code: i32) -> CallCase {
    CallCase {
        name,
        method: method.to_string(),
        params,
        code,
    }
}

const DEL: &str = "crm.lead.delete";

fn call_cases() -> Vec<CallCase> {
    let id = json!({"id": 1});
    let del = |k: &str, v: Value| json!({ k: v });
    vec![
        // method-name spellings (the operator-ish deny glob is `crm.lead.delete`)
        c("name: upper case", "CRM.LEAD.DELETE", id.clone(), 4),
        c("name: mixed case", "Crm.Lead.Delete", id.clone(), 4),
        c("name: .json suffix", "crm.lead.delete.json", id.clone(), 4),
        c("name: .XML suffix", "crm.lead.delete.XML", id.clone(), 4),
        c(
            "name: double suffix",
            "crm.lead.delete.json.xml",
            id.clone(),
            2,
        ),
        c(
            "name: %2E-encoded dots",
            "crm%2Elead%2Edelete",
            id.clone(),
            2,
        ),
        c(
            "name: %2Ejson suffix",
            "crm.lead.delete%2Ejson",
            id.clone(),
            2,
        ),
        c(
            "name: Cyrillic look-alike e",
            "crm.lead.dеlete",
            id.clone(),
            2,
        ),
        c("name: fullwidth dots", "crm．lead．delete", id.clone(), 2),
        c(
            "name: surrounding blanks",
            "  crm.lead.delete\t",
            id.clone(),
            4,
        ),
        c("name: inner blank", "crm.lead. delete", id.clone(), 2),
        c("name: control char", "crm.lead.delete\u{1}", id.clone(), 2),
        c(
            "name: zero-width space",
            "crm.lead.delete\u{200b}",
            id.clone(),
            2,
        ),
        c("name: trailing slash", "crm.lead.delete/", id.clone(), 2),
        c("name: path traversal", "../crm.lead.delete", id.clone(), 2),
        c("name: query in name", "crm.lead.delete?id=1", json!({}), 2),
        c("name: empty segment", "crm..lead.delete", id.clone(), 2),
        // batch spellings, sent as a raw `batch` call
        c(
            "batch: cMd",
            "batch",
            del("cMd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: Cmd",
            "batch",
            del("Cmd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: CMD",
            "batch",
            del("CMD", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: ' cmd ' key",
            "batch",
            del(" cmd ", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: array cmd",
            "batch",
            del("cmd", json!(["user.current", "crm.lead.delete?id=1"])),
            4,
        ),
        c(
            "batch: two cmd keys",
            "batch",
            json!({"cmd": {"a": "user.current"}, "CMD": {"b": "crm.lead.delete?id=1"}}),
            4,
        ),
        c(
            "batch: cmd[x] flat keys",
            "batch",
            json!({"cmd": {"a": "user.current"}, "cmd[b]": "crm.lead.delete?id=1"}),
            4,
        ),
        c(
            "batch: URL-encoded command",
            "batch",
            del("cmd", json!({"a": "crm.lead.delete%3Fid%3D1"})),
            4,
        ),
        c(
            "batch: %-encoded method",
            "batch",
            del("cmd", json!({"a": "crm%2Elead%2Edelete?id=1"})),
            4,
        ),
        c(
            "batch: nested batch",
            "batch",
            del("cmd", json!({"a": "batch?cmd[b]=crm.lead.delete%3Fid%3D1"})),
            4,
        ),
        c(
            "batch: object command",
            "batch",
            del(
                "cmd",
                json!({"a": {"method": "crm.lead.delete", "params": {"id": 1}}}),
            ),
            4,
        ),
        c(
            "batch: unknown extra key",
            "batch",
            json!({"cmd": {"a": "user.current"}, "extra": {"b": "crm.lead.delete?id=1"}}),
            4,
        ),
        c(
            "batch: CASE.json command",
            "batch",
            del("cmd", json!({"a": "CRM.Lead.Delete.json?id=1"})),
            4,
        ),
        c(
            "batch: secret-looking key",
            "batch",
            del("cmd", json!({"token": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: batch.json method",
            "BATCH.json",
            del("cMd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: string cmd",
            "batch",
            del("cmd", json!("crm.lead.delete?id=1")),
            4,
        ),
    ]
}

pub(super) async fn method_names_and_batch_keys(s: Suite<'_>, t: &mut Table) {
    let Suite {
        sb,
        env,
        mcp,
        secrets,
    } = s;
    for case in call_cases() {
        let params = case.params.to_string();
        let before = seen(sb);
        let (code, cli_out, _) = cli(
            env,
            &[
                "call",
                &case.method,
                "--params",
                &params,
                "--confirm-write",
                "--confirm-destructive",
            ],
            secrets,
        )
        .await;
        let (err, mcp_out) = tool(
            mcp,
            "b24_write",
            json!({"method": case.method, "params": case.params, "confirm": true, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(sb) - before;
        let repro = format!(
            "b24 call {:?} --params '{params}' --confirm-write --confirm-destructive",
            case.method
        );
        t.check(
            case.name,
            code == case.code,
            format!("exit {code}, expected {}: {repro}: {cli_out}", case.code),
        );
        t.check(
            case.name,
            err,
            format!("b24_write was not an error: {mcp_out}"),
        );
        t.check(
            case.name,
            reached == 0,
            format!("{reached} request(s) reached the portal ({repro})"),
        );
        t.push(Row {
            attempt: case.name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
    assert_eq!(calls_of(sb, DEL), 0, "no delete ever reached the portal");
}

pub(super) async fn batch_commands(s: Suite<'_>, t: &mut Table) {
    let Suite {
        sb,
        env,
        mcp,
        secrets,
    } = s;
    // MCP b24_batch (and `b24 batch`): a denied command in another spelling, and a nested batch.
    for (name, method) in [
        ("b24_batch: CASE.json command", "CRM.Lead.Delete.json"),
        ("b24_batch: nested batch command", "batch"),
        ("b24_batch: look-alike method", "crm.lead.dеlete"),
    ] {
        let before = seen(sb);
        let cmd = json!({"key": "x", "method": method, "params": {"id": 1, "cmd": {"a": "crm.lead.delete?id=1"}}});
        let (code, cli_out, _) = cli(
            env,
            &[
                "batch",
                "--cmd",
                &cmd.to_string(),
                "--confirm-write",
                "--confirm-destructive",
            ],
            secrets,
        )
        .await;
        let (err, mcp_out) = tool(
            mcp,
            "b24_batch",
            json!({"commands": [{"method": "user.current"}, {"key": "x", "method": method, "params": {"id": 1, "cmd": {"a": "crm.lead.delete?id=1"}}}], "confirm": true, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4 || code == 2,
            format!("`b24 batch --cmd '{cmd}'` exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("b24_batch not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
}

pub(super) async fn plans(s: Suite<'_>, t: &mut Table) {
    let Suite {
        sb,
        env,
        mcp,
        secrets,
    } = s;
    // Plans: a smuggling batch and a denied spelling are refused when planned.
    for (name, method, params) in [
        (
            "plan: smuggling batch (cMd)",
            "batch",
            json!({"cMd": {"a": "crm.lead.delete?id=2"}}),
        ),
        (
            "plan: denied name .json",
            "CRM.LEAD.DELETE.json",
            json!({"id": 2}),
        ),
    ] {
        let before = seen(sb);
        let (code, cli_out, _) = cli(
            env,
            &["plan", method, "--params", &params.to_string()],
            secrets,
        )
        .await;
        let (err, mcp_out) =
            tool(mcp, "b24_plan", json!({"method": method, "params": params})).await;
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4,
            format!("`b24 plan {method} --params '{params}'` exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("b24_plan not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
}
