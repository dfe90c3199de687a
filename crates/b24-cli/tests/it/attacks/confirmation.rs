//! Destructive calls: the model's own confirmation never stands in for a person who can be
//! asked — through a plan, `b24_write`, `b24_batch`, or a client of the 2026-07-28 protocol.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

pub(super) async fn destructive_calls_need_the_person(s: Suite<'_>, t: &mut Table) {
    let Suite {
        sb,
        env,
        mcp,
        secrets,
    } = s;
    // A destructive plan (crm.contact.delete is not denied): applied without the destructive
    // confirmation it is refused; through MCP with a person who can be asked, the model's own
    // confirm_destructive is not enough and the person says no.
    let person = Decliner::default();
    let asker = connect_person(env, person.clone()).await;
    {
        let name = "apply: destructive plan";
        let plan = env
            .run(&["plan", "crm.contact.delete", "--params", r#"{"id":1}"#])
            .await;
        let id = json(&plan)["id"].as_str().unwrap_or_default().to_string();
        let before = seen(sb);
        let (code, cli_out, _) = cli(env, &["apply", &id, "--confirm-write"], secrets).await;
        let (err, mcp_out) = tool(mcp, "b24_apply", json!({"plan_id": id})).await;
        let asked = person.asked.load(Ordering::SeqCst);
        let (err2, mcp2) = tool(
            &asker,
            "b24_apply",
            json!({"plan_id": id, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4,
            format!("`b24 apply {id} --confirm-write` exit {code}: {cli_out}"),
        );
        t.check(
            name,
            err,
            format!("b24_apply without confirm_destructive not refused: {mcp_out}"),
        );
        t.check(name, err2, format!("b24_apply with the model's confirm_destructive went through although a person could be asked: {mcp2}"));
        t.check(
            name,
            person.asked.load(Ordering::SeqCst) > asked,
            "the person was not asked",
        );
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: format!("{} / person: {}", short(&mcp_out), short(&mcp2)),
            reached,
            allowed: 0,
        });
    }
    for (name, args) in [
        (
            "b24_write: model confirm_destructive",
            json!({"method": "crm.contact.delete", "params": {"id": 2}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_write: plan_id + model confirm",
            json!({"method": "crm.contact.delete", "params": {"id": 3}, "confirm_destructive": true, "plan_id": "__PLAN__"}),
        ),
        (
            "b24_batch: model confirm_destructive",
            json!({"commands": [{"method": "crm.contact.delete", "params": {"id": 4}}], "confirm": true, "confirm_destructive": true}),
        ),
    ] {
        let mut args = args;
        let tool_name = if args.get("commands").is_some() {
            "b24_batch"
        } else {
            "b24_write"
        };
        if args.get("plan_id").is_some() {
            let plan = env
                .run(&["plan", "crm.contact.delete", "--params", r#"{"id":3}"#])
                .await;
            args["plan_id"] = json!(json(&plan)["id"].as_str().unwrap_or_default());
        }
        let asked = person.asked.load(Ordering::SeqCst);
        let before = seen(sb);
        let (err, mcp_out) = tool(&asker, tool_name, args.clone()).await;
        let reached = seen(sb) - before;
        t.check(
            name,
            err,
            format!("{tool_name} {args} went through although the person can be asked: {mcp_out}"),
        );
        t.check(
            name,
            person.asked.load(Ordering::SeqCst) > asked,
            "the person was not asked",
        );
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: "n/a (flags are the CLI's confirmation)".into(),
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
    asker.cancel().await.ok();
}

pub(super) async fn a_modern_client_cannot_stand_in_for_the_person(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, env, .. } = s;
    // A client on the 2026-07-28 protocol that declares elicitation: the server cannot ask
    // (no server-to-client requests in that era), so the model's confirm_destructive must not
    // stand in for the person the client says it can reach.
    {
        use rmcp::ClientServiceExt;
        use rmcp::model::ProtocolVersion;
        use rmcp::service::ClientLifecycleMode;
        let name = "b24_write: 2026-07-28 client with elicitation";
        let person = Decliner::default();
        let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
        let modern = person
            .clone()
            .serve_with_lifecycle(
                TokioChildProcess::new(cmd).unwrap(),
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .expect("server/discover");
        let before = seen(sb);
        let args = json!({"method": "crm.contact.delete", "params": {"id": 5}, "confirm": true, "confirm_destructive": true});
        let (_err, mcp_out) = tool(&modern, "b24_write", args.clone()).await;
        modern.cancel().await.ok();
        let reached = seen(sb) - before;
        t.check(name, mcp_out.contains("refused") || person.asked.load(Ordering::SeqCst) > 0, format!("b24_write {args} from a client that declared form elicitation went through on the model's confirm_destructive, no person asked: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} destructive request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: "n/a".into(),
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
}
