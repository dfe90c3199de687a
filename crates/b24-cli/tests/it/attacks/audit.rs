//! The audit log: B24_AUDIT_FILE cannot move it, secrets handed in never land in it, a
//! write is not sent when it cannot be recorded, and a closed stdout loses no record.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

pub(super) async fn audit_file_setting_is_ignored(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // B24_AUDIT_FILE=/dev/null has no effect: the sent write is in the audit log.
    {
        let name = "audit: B24_AUDIT_FILE=/dev/null";
        let mut e = Env::webhook(sb);
        e.set("B24_AUDIT_FILE", "/dev/null");
        let adds = calls_of(sb, "crm.lead.add");
        let (code, cli_out, all) = cli(
            &e,
            &[
                "call",
                "crm.lead.add",
                "--params",
                r#"{"fields":{"TITLE":"audited"}}"#,
                "--confirm-write",
            ],
            secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "audited"}}, "confirm": true})).await;
        m.cancel().await.ok();
        let reached = calls_of(sb, "crm.lead.add") - adds;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let sent = audit
            .lines()
            .filter(|l| l.contains("crm.lead.add") && l.contains("\"ok\""))
            .count();
        t.check(
            name,
            code == 0 && !err && sent == 2,
            format!(
                "exit {code}, mcp error {err}, {sent} ok records of 2 sent writes in audit.jsonl"
            ),
        );
        // The one expected line: the variable is named as not read (never silently ignored).
        let other: String = all
            .lines()
            .filter(|l| {
                !l.contains(
                    "B24_AUDIT_FILE is a setting of the original Python skill and is not read",
                )
            })
            .collect();
        t.check(
            name,
            !other.to_ascii_lowercase().contains("audit")
                && all.contains("B24_AUDIT_FILE is a setting of the original Python skill"),
            format!("a warning about the audit was printed, or B24_AUDIT_FILE was ignored silently: {cli_out}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 2,
        });
    }
}

pub(super) async fn secrets_handed_in_stay_out_of_the_audit_log(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    let info = sb.info();
    // Secrets the caller hands in never land in the audit log: the webhook URL given as a
    // method name (malformed), and the webhook code inside the params of a refused write.
    for (name, method, params) in [
        (
            "audit: webhook URL as the method name",
            format!("{}crm.lead.list", info.webhook_url),
            json!({}),
        ),
        (
            "audit: secret in a refused write's params",
            "crm.lead.add".to_string(),
            json!({"fields": {"TITLE": "x", "COMMENTS": info.webhook_code}}),
        ),
    ] {
        let e = Env::webhook(sb);
        let before = seen(sb);
        let (code, cli_out, _) = cli(
            &e,
            &["call", &method, "--params", &params.to_string()],
            secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) =
            tool(&m, "b24_write", json!({"method": method, "params": params})).await;
        m.cancel().await.ok();
        let reached = seen(sb) - before;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let leaked = audit.contains(&info.webhook_code);
        t.check(
            name,
            code == 2 || code == 4,
            format!("exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("not refused: {mcp_out}"));
        t.check(name, !leaked, format!("the webhook code is written to audit.jsonl: b24 call {method:?} --params '{params}' → {}", audit.lines().find(|l| l.contains(&info.webhook_code)).unwrap_or("").chars().take(400).collect::<String>()));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: format!(
                "{}{}",
                if leaked { "AUDIT HOLDS SECRET " } else { "" },
                mcp_out
            ),
            reached,
            allowed: 0,
        });
    }
}

pub(super) async fn unwritable_records_stop_the_write(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // The records cannot be written (the state dir is a file): a write is not sent.
    {
        let name = "audit: state dir unwritable";
        let e = Env::webhook(sb);
        let blocker = e.dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").unwrap();
        let sd = blocker.join("state");
        let ex = ["--state-dir", sd.to_str().unwrap()];
        let before = seen(sb);
        let mut a = ex.to_vec();
        a.extend([
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ]);
        let (code, cli_out, _) = cli(&e, &a, secrets).await;
        let m = connect(&e, &ex).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true})).await;
        m.cancel().await.ok();
        let reached = seen(sb) - before;
        t.check(name, code != 0, format!("exit {code}: {cli_out}"));
        t.check(name, err, format!("not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} write(s) sent without an audit record"),
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

pub(super) async fn a_closed_pipe(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, .. } = s;
    // A closed pipe: `b24 call crm.lead.add … | head -c1`: no panic, the sent write audited.
    {
        let name = "pipe: stdout closed before output";
        let e = Env::webhook(sb);
        let adds = calls_of(sb, "crm.lead.add");
        let mut cmd = e.cmd(&["call", "crm.lead.list", "--params", r#"{"select":["*"]}"#]);
        let out = closed_stdout(&mut cmd).await;
        let mut cmd = e.cmd(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"piped"}}"#,
            "--confirm-write",
        ]);
        let out2 = closed_stdout(&mut cmd).await;
        let reached = calls_of(sb, "crm.lead.add") - adds;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let recorded = audit
            .lines()
            .any(|l| l.contains("crm.lead.add") && (l.contains("\"ok\"") || l.contains("sending")));
        let (c1, s1) = out;
        let (c2, s2) = out2;
        t.check(
            name,
            !s1.contains("panicked") && !s2.contains("panicked"),
            format!("panic: {s1} {s2}"),
        );
        t.check(
            name,
            c1 == 0 && c2 == 0,
            format!("exit {c1} / {c2} (closed stdout is a quiet exit 0): {s1} {s2}"),
        );
        t.check(
            name,
            reached == 1 && recorded,
            format!("{reached} write(s) sent, recorded in audit: {recorded}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: format!("exit {c1}/{c2} {}", short(&s2)),
            mcp: "n/a".into(),
            reached,
            allowed: 1,
        });
    }
}

/// Run with stdout a pipe whose reading end is closed at once; (exit code, stderr).
async fn closed_stdout(cmd: &mut std::process::Command) -> (i32, String) {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    tokio::task::spawn_blocking(move || {
        let o = child.wait_with_output().unwrap();
        (code(&o), stderr(&o))
    })
    .await
    .unwrap()
}
