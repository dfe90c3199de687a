//! Method parameters end to end: `--strict-params` refuses an unknown parameter before
//! anything is sent (off by default in the CLI), and `b24 describe` shows the documented
//! parameters and a portal's live fields.
//!
//! A module of `tests/it/guard.rs`, so it uses its helpers.

use super::*;

/// `--strict-params`: a parameter the method does not take is refused before anything is sent,
/// in every spelling an attacker might try; the sandbox's request log must stay empty.
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_refuse_unknown_parameters_before_sending() {
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    let refused: &[(&[&str], &str)] = &[
        (
            &[
                "call",
                "crm.deal.add",
                "--confirm-write",
                "-p",
                r#"{"feilds":{"TITLE":"x"}}"#,
            ],
            "feilds",
        ),
        (
            &[
                "call",
                "crm.deal.add",
                "--confirm-write",
                "-p",
                r#"{"FEILDS":{"TITLE":"x"}}"#,
            ],
            "FEILDS",
        ),
        (
            &[
                "call",
                "crm.deal.add",
                "--confirm-write",
                "-p",
                r#"{"fields":{"TITLE":"x"},"Evil":1}"#,
            ],
            "Evil",
        ),
        (
            &[
                "call",
                "crm.deal.add",
                "--confirm-write",
                "-p",
                r#"{"fields":{},"params":{"EVIL":"Y"}}"#,
            ],
            "params.EVIL",
        ),
        (
            &[
                "call",
                "crm.deal.add",
                "--confirm-write",
                "-p",
                r#"{"evil[x]":1}"#,
            ],
            "evil[x]",
        ),
        (
            &["call", "user.current", "-p", r#"{"anything":1}"#],
            "anything",
        ),
        // a raw batch: the command's query string is read the way the portal reads it
        (
            &[
                "call",
                "batch",
                "--confirm-write",
                "-p",
                r#"{"cmd":{"a":"crm.deal.add?fields[TITLE]=x&PARAMS[evil]=1"}}"#,
            ],
            "params.evil",
        ),
        (
            &["call", "batch", "-p", r#"{"CMD":["user.current?x=1"]}"#],
            "x",
        ),
    ];
    for (args, what) in refused {
        let mut a = args.to_vec();
        a.push("--strict-params");
        let o = env.run(&a).await;
        assert_eq!(code(&o), 4, "{a:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(what) && stderr(&o).contains("b24 describe"),
            "{a:?}: {}",
            stderr(&o)
        );
    }
    // `b24 batch` with {method, params} commands
    let cmds = env.dir.path().join("cmds.jsonl");
    std::fs::write(
        &cmds,
        "{\"key\":\"a\",\"method\":\"crm.lead.list\",\"params\":{\"select\":[\"ID\"]}}\n{\"key\":\"b\",\"method\":\"crm.deal.get\",\"params\":{\"id\":1,\"sneaky\":true}}\n",
    )
    .unwrap();
    let o = env
        .run(&["batch", "--strict-params", &cmds.display().to_string()])
        .await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("sneaky"), "{}", stderr(&o));
    assert!(
        sb.request_log().is_empty(),
        "nothing may reach the portal: {:?}",
        sb.request_log()
    );
    // a policy that asks for it wins over a flag that turns it off
    std::fs::write(
        env.config_dir().join("policy.toml"),
        "strict_params = true\n",
    )
    .unwrap();
    let o = env
        .run(&[
            "call",
            "user.current",
            "--strict-params=false",
            "-p",
            r#"{"x":1}"#,
        ])
        .await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(sb.request_log().is_empty());
    // documented names pass in any case, custom fields are never refused statically
    let o = env
        .run(&[
            "call", "crm.deal.add", "--confirm-write", "-p",
            r#"{"FIELDS":{"TITLE":"ok","UF_CRM_1":"x","LEAD_ID":1},"Params":{"REGISTER_SONET_EVENT":"N"}}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(&sb, "crm.deal.add"), 1);
}

/// Without the flag the CLI does not check parameters (the MCP server does by default).
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_are_off_by_default_in_the_cli() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["call", "user.current", "-p", r#"{"x":1}"#]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(calls_of(&sb, "user.current"), 1);
}

/// `b24 describe` shows the documented parameters, and with a portal its live fields.
#[tokio::test(flavor = "multi_thread")]
async fn describe_shows_parameters_and_live_fields() {
    let o = Env::bare().run(&["describe", "crm.deal.add"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["parameters"]["status"], "complete");
    let params = v["parameters"]["params"].as_array().unwrap();
    let fields = params.iter().find(|p| p["name"] == "fields").unwrap();
    let opened = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "OPENED")
        .unwrap();
    assert_eq!(opened["values"], serde_json::json!(["Y", "N"]));
    assert_eq!(fields["fields_open"], true, "a deal takes user fields");
    assert!(v.get("live_fields").is_none(), "no portal, no live fields");
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["describe", "crm.deal.add"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["live_fields"]["from"], "crm.deal.fields", "{v}");
    let live = v["live_fields"]["fields"].as_array().unwrap();
    let title = live.iter().find(|f| f["name"] == "TITLE").unwrap();
    assert_eq!(
        (title["documented"].as_bool(), title["live"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(
        live.iter()
            .any(|f| f["name"] == "ID" && f["documented"] == false && f["live"] == true)
    );
    assert_eq!(calls_of(&sb, "crm.deal.fields"), 1);
    // an undocumented method says so
    let o = Env::bare().run(&["describe", "event.test"]).await;
    assert_eq!(json(&o)["parameters"]["status"], "undocumented");
}
