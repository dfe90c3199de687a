//! Read-only tools: `b24_read` and `b24_export` (and their CLI counterparts with no
//! confirmation) given a batch, a write or a duplicate cursor parameter.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

pub(super) async fn read_only_tools(s: Suite<'_>, t: &mut Table) {
    let Suite {
        sb,
        env,
        mcp,
        secrets,
    } = s;
    // Read-only tools: b24_read / b24_export with a batch or a write; the CLI counterpart is
    // the same call with no confirmation (`b24 call`, `b24 export`).
    let smuggle = json!({"cMd": {"a": "crm.lead.list", "b": "crm.lead.add?fields[TITLE]=x"}});
    let ro: Vec<(&str, Vec<String>, &str, Value)> = vec![
        (
            "b24_read: batch with a write",
            vec![
                "call".into(),
                "batch".into(),
                "--params".into(),
                smuggle.to_string(),
            ],
            "b24_read",
            json!({"method": "batch", "params": smuggle}),
        ),
        (
            "b24_read: write method",
            vec![
                "call".into(),
                "crm.lead.add".into(),
                "--params".into(),
                r#"{"fields":{"TITLE":"x"}}"#.into(),
            ],
            "b24_read",
            json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}}),
        ),
        (
            "b24_read: v3 batch array",
            vec![
                "call".into(),
                "batch".into(),
                "--v3".into(),
                "--params".into(),
                r#"[{"method":"tasks.task.delete","query":{"id":1}}]"#.into(),
            ],
            "b24_read",
            json!({"method": "batch", "v3": true, "params": {"0": {"method": "tasks.task.delete", "query": {"id": 1}}}}),
        ),
        (
            "b24_export: batch",
            vec![
                "export".into(),
                "batch".into(),
                "--params".into(),
                smuggle.to_string(),
            ],
            "b24_export",
            json!({"method": "batch", "params": smuggle}),
        ),
        (
            "b24_export: write method",
            vec!["export".into(), "crm.lead.delete".into()],
            "b24_export",
            json!({"method": "crm.lead.delete"}),
        ),
        (
            "b24_export: unknown method",
            vec!["export".into(), "crm.lead.purge".into()],
            "b24_export",
            json!({"method": "crm.lead.purge"}),
        ),
        (
            // offset=0 makes the catalog call it a read; a second spelling of the same
            // parameter (the portal matches names case-insensitively) moves the cursor.
            "b24_read: offset/OFFSET duplicate",
            vec![
                "call".into(),
                "imbot.v2.event.get".into(),
                "--params".into(),
                r#"{"offset":0,"OFFSET":5}"#.into(),
            ],
            "b24_read",
            json!({"method": "imbot.v2.event.get", "params": {"offset": 0, "OFFSET": 5}}),
        ),
    ];
    for (name, args, tool_name, targs) in ro {
        let before = seen(sb);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, cli_out, _) = cli(env, &a, secrets).await;
        let (err, mcp_out) = tool(mcp, tool_name, targs.clone()).await;
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4 || code == 2,
            format!("`b24 {}` exit {code}: {cli_out}", args.join(" ")),
        );
        t.check(
            name,
            err,
            format!("{tool_name} {targs} not refused: {mcp_out}"),
        );
        t.check(
            name,
            reached == 0,
            format!(
                "{reached} request(s) reached the portal (b24 {} / {tool_name} {targs})",
                args.join(" ")
            ),
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
