//! Limits on writes: the write budget against a raw batch and a fresh --state-dir, and a
//! second spelling of a parameter that decides a call's risk.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

pub(super) async fn raw_batch_budget(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // Write budget: a raw batch of five writes under max_writes_per_hour = 2.
    {
        let name = "budget: raw batch of 5 writes, max 2/h";
        let mut e = Env::webhook(sb);
        e.set("B24_MAX_WRITES_PER_HOUR", "2");
        let cmds: serde_json::Map<String, Value> = (0..5)
            .map(|i| {
                (
                    format!("c{i}"),
                    json!(format!("crm.lead.add?fields[TITLE]=budget{i}")),
                )
            })
            .collect();
        let p = json!({"cmd": cmds});
        let adds = calls_of(sb, "crm.lead.add");
        let (code, cli_out, _) = cli(
            &e,
            &[
                "call",
                "batch",
                "--params",
                &p.to_string(),
                "--confirm-write",
            ],
            secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(
            &m,
            "b24_write",
            json!({"method": "batch", "params": p, "confirm": true}),
        )
        .await;
        m.cancel().await.ok();
        let reached = calls_of(sb, "crm.lead.add") - adds;
        t.check(name, reached <= 2, format!("{reached} crm.lead.add reached the portal under a budget of 2 per hour: B24_MAX_WRITES_PER_HOUR=2 b24 call batch --params '{p}' --confirm-write (exit {code}; mcp error={err})"));
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 2,
        });
    }
}

pub(super) async fn caller_budget_and_a_fresh_state_dir(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // Budget from a config-dir policy and a fresh --state-dir: the counter lives in the
    // caller's state dir when no operator file exists (only an operator budget is pinned;
    // see the in-process tests).
    {
        let name = "budget: --state-dir fresh (caller layer)";
        let e = Env::webhook(sb);
        std::fs::write(
            e.config_dir().join("policy.toml"),
            "max_writes_per_hour = 1\n",
        )
        .unwrap();
        let adds = calls_of(sb, "crm.lead.add");
        let add = [
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"b"}}"#,
            "--confirm-write",
        ];
        let (c1, _, _) = cli(&e, &add, secrets).await;
        let (c2, cli2, _) = cli(&e, &add, secrets).await;
        let fresh = e.dir.path().join("fresh-state");
        let mut a = vec!["--state-dir", fresh.to_str().unwrap()];
        a.extend(add);
        let (c3, cli3, _) = cli(&e, &a, secrets).await;
        let reached = calls_of(sb, "crm.lead.add") - adds;
        t.check(
            name,
            c1 == 0 && c2 == 4,
            format!("first write exit {c1}, second exit {c2}: {cli2}"),
        );
        // By design the counter of a caller layer lives in the caller's state dir, so a fresh
        // one starts over (the caller could as well drop its own rule); an operator budget is
        // pinned to the account's state dir (crates/b24-guard/tests/it/gate/budget.rs).
        t.check(
            name,
            c3 == 0,
            format!("the fresh state dir changed: exit {c3}: {cli3}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: format!("2nd: {} / fresh: {}", short(&cli2), short(&cli3)),
            mcp: "n/a".into(),
            reached,
            allowed: 2,
        });
    }
}

pub(super) async fn a_second_spelling_of_clear(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // Parameter-dependent risk: event.offline.get with clear=0 is a write, without it a
    // destructive call. Two spellings of `clear` (the portal matches names case-insensitively).
    {
        let name = "risk: CLEAR=0 + clear=1 under deny_destructive";
        let e = Env::oauth(sb);
        std::fs::write(
            e.config_dir().join("policy.toml"),
            "deny_destructive = true\n",
        )
        .unwrap();
        let p = r#"{"CLEAR":0,"clear":1}"#;
        let before = calls_of(sb, "event.offline.get");
        let (code, cli_out, _) = cli(
            &e,
            &[
                "call",
                "event.offline.get",
                "--params",
                p,
                "--confirm-write",
            ],
            secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "event.offline.get", "params": {"CLEAR": 0, "clear": 1}, "confirm": true})).await;
        let bp = json!({"cmd": {"a": "event.offline.get?CLEAR=0&clear=1"}});
        let (code2, cli2, _) = cli(
            &e,
            &[
                "call",
                "batch",
                "--params",
                &bp.to_string(),
                "--confirm-write",
            ],
            secrets,
        )
        .await;
        m.cancel().await.ok();
        let reached = calls_of(sb, "event.offline.get") - before;
        t.check(name, code == 4 && code2 == 4, format!("exit {code} / batch exit {code2}: b24 call event.offline.get --params '{p}' --confirm-write with deny_destructive: {cli_out} / {cli2}"));
        t.check(name, err, format!("b24_write not refused: {mcp_out}"));
        t.check(name, reached == 0, format!("{reached} event.offline.get (which clears the queue) reached the portal under deny_destructive"));
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
}
