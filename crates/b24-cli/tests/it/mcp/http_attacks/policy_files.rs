//! A client's policy file: it cannot widen the server's rules (not even by saying `false` or
//! none), and it must be the operator's.
//!
//! A module of `tests/it/mcp/http_attacks.rs`, so it uses its helpers and those of
//! `tests/it/mcp.rs`.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_a_clients_policy_file_cannot_widen_the_server_and_must_be_the_operators() {
    use std::os::unix::fs::PermissionsExt;
    let sb = sandbox_with_leads(2).await;
    let env = Env::webhook(&sb);
    // The server's own restrictions (a caller layer of the serving process): leads are never
    // deleted, one write an hour; and it lets unknown methods through (--allow-unlisted).
    std::fs::write(
        env.config_dir().join("policy.toml"),
        "deny = [\"crm.lead.delete\"]\nmax_writes_per_hour = 1\n",
    )
    .unwrap();
    let evil_dir = env.dir.path().join("evil-guard");
    let wide = format!(
        "allow = [\"*\"]\nstrict_params = false\nforbid_allow_unlisted = true\nguard_dir = \"{}\"\naudit_params = \"full\"\nallow_unaudited_reads = true\nrequire_person_confirmation = \"none\"\nmax_writes_per_hour = 1000\n",
        evil_dir.display()
    );
    let token = token_add(&env, "wide", &wide).await;
    let server = HttpServer::start(&env, &["--allow-unlisted"]).await;
    let c = http_client(&server.url, &token).await.expect("initialize");
    let mut attempts = 0;
    let refused = |r: &CallToolResult, what: &str| {
        assert!(is_error(r), "{what}: served: {}", text(r));
    };

    // Deleting a lead, in every spelling and through every tool.
    for m in [
        "crm.lead.delete",
        "CRM.LEAD.DELETE",
        "crm.lead.delete.json",
        "Crm.Lead.Delete.XML",
        " crm.lead.delete\n",
        "crm.lead.delete?id=1",
        "crm.lead.delete/",
        "crm%2Elead%2Edelete",
        "crm.lead..delete",
        "crm.lead.delete.json.json",
    ] {
        let args =
            json!({"method": m, "params": {"id": 1}, "confirm": true, "confirm_destructive": true});
        refused(&call(&c, "b24_write", args).await, m);
        refused(
            &call(&c, "b24_read", json!({"method": m, "params": {"id": 1}})).await,
            m,
        );
        let plan = call(&c, "b24_plan", json!({"method": m, "params": {"id": 1}})).await;
        refused(&plan, m);
        attempts += 3;
    }
    let batches = [
        json!({"commands": [{"method": "crm.lead.delete", "params": {"id": 1}}], "confirm": true, "confirm_destructive": true}),
        json!({"commands": [{"method": "crm.lead.list"}, {"method": "CRM.LEAD.DELETE.json", "params": {"id": 2}}], "confirm": true, "confirm_destructive": true}),
        json!({"commands": [{"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}], "confirm": true, "confirm_destructive": true}),
    ];
    for b in batches {
        refused(&call(&c, "b24_batch", b.clone()).await, &b.to_string());
        attempts += 1;
    }
    for (tool, args) in [
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.list", "b": "crm.lead.delete?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "CRM.LEAD.DELETE.json?id=1"}}}),
        ),
        (
            "b24_read",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.%64elete?id=1"}}}),
        ),
        (
            "b24_write",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_write",
            json!({"method": "batch", "params": {"CMD": {"a": "crm.lead.delete?id=1"}, "cmd": {"a": "crm.lead.list"}}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_export",
            json!({"method": "crm.lead.delete", "params": {"id": 1}}),
        ),
        (
            "b24_export",
            json!({"method": "batch", "params": {"cmd": {"a": "crm.lead.delete?id=1"}}}),
        ),
    ] {
        refused(
            &call(&c, tool, args.clone()).await,
            &format!("{tool} {args}"),
        );
        attempts += 1;
    }
    assert!(
        portal_calls(&sb).is_empty(),
        "a denied call reached the portal: {:?}",
        portal_calls(&sb)
    );

    // strict_params = false in the client's file does not turn MCP's check off.
    for params in [
        json!({"feilds": {"TITLE": "x"}}),
        json!({"filter": {}, "FILTER": {}}),
    ] {
        let r = call(
            &c,
            "b24_read",
            json!({"method": "crm.lead.list", "params": params}),
        )
        .await;
        refused(&r, &params.to_string());
        attempts += 1;
    }
    // forbid_allow_unlisted in the client's file holds against the server's --allow-unlisted.
    for m in ["made.up.method", "crm.lead.deletex"] {
        let r = call(
            &c,
            "b24_write",
            json!({"method": m, "confirm": true, "confirm_destructive": true}),
        )
        .await;
        refused(&r, m);
        assert!(portal_calls(&sb).is_empty(), "{m} reached the portal");
        assert!(text(&r).contains("unknown"), "{}", text(&r));
        attempts += 1;
    }
    assert!(
        portal_calls(&sb).is_empty(),
        "a call the client's file forbids reached the portal: {:?}",
        portal_calls(&sb)
    );

    // max_writes_per_hour = 1000 does not raise the server's 1; audit_params = "full" and
    // guard_dir are not the client's to set.
    let add = |t: &str| json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": t}}, "confirm": true});
    let r = call(&c, "b24_write", add("SECRET-TITLE-ONE")).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = call(&c, "b24_write", add("SECRET-TITLE-TWO")).await;
    refused(&r, "a second write");
    assert!(text(&r).contains("write budget"), "{}", text(&r));
    attempts += 3;
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
    let raw = std::fs::read_to_string(env.state_dir().join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains("SECRET-TITLE"),
        "the client's audit_params = full was obeyed"
    );
    assert!(!evil_dir.exists(), "the client's guard_dir was used");

    // The file itself: writable by others, owned by another account, not a file, never ending.
    let file = env.dir.path().join("wide.policy.toml");
    let before = portal_calls(&sb).len();
    let read = json!({"method": "crm.lead.list"});
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "a world-writable policy file");
    assert!(
        text(&r).contains("writable by group or others"),
        "{}",
        text(&r)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    attempts += 1;
    if nix_is_root() {
        let o = std::process::Command::new("chown")
            .args(["65534", file.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(o.success());
        let r = call(&c, "b24_read", read.clone()).await;
        refused(&r, "a policy file owned by another account");
        assert!(text(&r).contains("owned by uid 65534"), "{}", text(&r));
        std::process::Command::new("chown")
            .args(["0", file.to_str().unwrap()])
            .status()
            .unwrap();
        attempts += 1;
    }
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let fifo_made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .is_ok_and(|s| s.success());
    if fifo_made {
        // Twice: a FIFO that blocked a worker thread would hang the second call, or the server.
        for _ in 0..3 {
            let r = call(&c, "b24_read", read.clone()).await;
            refused(&r, "a FIFO as the policy file");
            assert!(text(&r).contains("not a regular file"), "{}", text(&r));
        }
        std::fs::remove_file(&file).unwrap();
        attempts += 1;
    }
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "/dev/zero as the policy file");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let r = call(&c, "b24_read", read.clone()).await;
    refused(&r, "a directory as the policy file");
    std::fs::remove_dir(&file).unwrap();
    attempts += 2;
    assert_eq!(portal_calls(&sb).len(), before);
    // Put back (mode 0644, this account's): served again.
    std::fs::write(&file, saved).unwrap();
    let r = call(&c, "b24_read", read).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(portal_calls(&sb).len(), before + 1);
    assert!(
        audit_records(&env)
            .iter()
            .filter(|r| r["origin"] == "mcp")
            .all(|r| r["client"] == "wide"),
        "a record not naming the client"
    );
    eprintln!("a client's policy file: {attempts} attempts to widen it, none got through");
    c.cancel().await.ok();
    sb.shutdown().await;
}

/// Whether the tests run as root (then a file can be given to another account).
fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Keys a client's file sets to their loosest value change nothing the server's layers say.
#[tokio::test(flavor = "multi_thread")]
async fn http_a_clients_file_saying_false_or_none_does_not_lift_the_servers_rules() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    let loose = "read_only = false\ndeny_destructive = false\nrequire_plan_for_writes = false\nrequire_person_confirmation = \"none\"\nstrict = false\npacks = [\"core\", \"comms\", \"automation\", \"collab\", \"content\", \"boards\", \"commerce\", \"other\"]\n";
    let token = token_add(&env, "loose", loose).await;
    let add = json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true, "confirm_destructive": true});
    let del = json!({"method": "crm.lead.delete", "params": {"id": 1}, "confirm": true, "confirm_destructive": true});
    for (server_rules, call_args, says) in [
        ("read_only = true\n", add.clone(), "read-only"),
        ("require_plan_for_writes = true\n", add.clone(), "plan"),
        ("deny_destructive = true\n", del.clone(), "destructive"),
        (
            "require_person_confirmation = \"destructive\"\n",
            del.clone(),
            "person",
        ),
        (
            "require_person_confirmation = \"writes\"\n",
            add.clone(),
            "person",
        ),
        (
            "packs = [\"comms\"]\n",
            json!({"method": "crm.lead.list"}),
            "pack",
        ),
    ] {
        std::fs::write(env.config_dir().join("policy.toml"), server_rules).unwrap();
        let server = HttpServer::start(&env, &[]).await;
        let c = http_client(&server.url, &token).await.unwrap();
        let tool = if call_args["method"] == "crm.lead.list" {
            "b24_read"
        } else {
            "b24_write"
        };
        let r = call(&c, tool, call_args.clone()).await;
        assert!(is_error(&r), "{server_rules}: served: {}", text(&r));
        assert!(
            text(&r).to_lowercase().contains(says),
            "{server_rules}: {}",
            text(&r)
        );
        c.cancel().await.ok();
        drop(server);
    }
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());
    sb.shutdown().await;
}
