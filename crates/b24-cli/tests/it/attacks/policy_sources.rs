//! Where policy comes from: a widening policy placed elsewhere (another --config-dir,
//! XDG_CONFIG_HOME, HOME), --env-file and profiles, and a policy file that does not parse.
//!
//! A module of `tests/it/attacks.rs`, so it uses its helpers.

use super::*;

pub(super) async fn placement(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // Policy placement: a policy in another --config-dir, XDG_CONFIG_HOME or HOME that tries
    // to widen (allow everything) cannot undo a narrowing rule from the environment.
    for (name, how) in [
        ("placement: --config-dir elsewhere", 0),
        ("placement: XDG_CONFIG_HOME", 1),
        ("placement: HOME elsewhere", 2),
    ] {
        let mut e = Env::webhook(sb);
        e.set("B24_METHOD_DENYLIST", "crm.lead.delete");
        let other = e.dir.path().join("elsewhere");
        std::fs::create_dir_all(other.join("b24")).unwrap();
        std::fs::create_dir_all(other.join(".config/b24")).unwrap();
        let wide = "allow = [\"*\"]\n";
        std::fs::write(other.join("policy.toml"), wide).unwrap();
        std::fs::write(other.join("b24/policy.toml"), wide).unwrap();
        std::fs::write(other.join(".config/b24/policy.toml"), wide).unwrap();
        let mut extra: Vec<String> = Vec::new();
        match how {
            0 => extra.extend(["--config-dir".to_string(), other.display().to_string()]),
            1 => {
                e.vars.retain(|(k, _)| k != "B24_CONFIG_DIR");
                e.set("XDG_CONFIG_HOME", other.to_str().unwrap());
            }
            _ => {
                e.vars.retain(|(k, _)| k != "B24_CONFIG_DIR");
                e.set("HOME", other.to_str().unwrap());
            }
        }
        let before = seen(sb);
        let mut a: Vec<&str> = extra.iter().map(String::as_str).collect();
        a.extend([
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":3}"#,
            "--confirm-destructive",
        ]);
        let (code, cli_out, _) = cli(&e, &a, secrets).await;
        let m = connect(&e, &extra.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.delete", "params": {"id": 3}, "confirm": true, "confirm_destructive": true})).await;
        m.cancel().await.ok();
        let reached = seen(sb) - before;
        t.check(name, code == 4, format!("exit {code}: {cli_out}"));
        t.check(name, err, format!("not refused: {mcp_out}"));
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

pub(super) async fn env_files_and_profiles(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    let info = sb.info();
    // --env-file and profiles feed policy the same way as the environment (CLI and `b24 mcp`),
    // while their connection variables are honoured.
    let wh = info.webhook_url.clone();
    for (name, setup) in [
        (
            "env-file: B24_READ_ONLY",
            format!("B24_WEBHOOK_URL={wh}\nB24_READ_ONLY=1\n"),
        ),
        (
            "env-file: B24_METHOD_DENYLIST",
            format!("B24_WEBHOOK_URL={wh}\nB24_METHOD_DENYLIST=crm.lead.*\n"),
        ),
        (
            "profile: read_only",
            format!("[profiles.p]\nwebhook_url = \"{wh}\"\nread_only = true\n"),
        ),
        (
            "profile: denylist as TOML array (fails closed)",
            format!(
                "[profiles.p]\nwebhook_url = \"{wh}\"\nmethod_denylist = [\"crm.lead.delete\", \"crm.lead.add\"]\n"
            ),
        ),
    ] {
        let e = Env::bare();
        let mut extra: Vec<String> = Vec::new();
        if name.starts_with("env-file") {
            let f = e.dir.path().join("agent.env");
            std::fs::write(&f, &setup).unwrap();
            extra.extend(["--env-file".into(), f.display().to_string()]);
        } else {
            std::fs::write(e.config_dir().join("config.toml"), &setup).unwrap();
            extra.extend(["--profile".into(), "p".into()]);
        }
        let ex: Vec<&str> = extra.iter().map(String::as_str).collect();
        let before = seen(sb);
        let mut a = ex.clone();
        a.extend([
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":4}"#,
            "--confirm-destructive",
        ]);
        let (code, cli_out, _) = cli(&e, &a, secrets).await;
        let mut a = ex.clone();
        a.extend([
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ]);
        let (code2, cli2, _) = cli(&e, &a, secrets).await;
        let m = connect(&e, &ex).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.delete", "params": {"id": 4}, "confirm": true, "confirm_destructive": true})).await;
        let (err2, mcp2) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true})).await;
        // the connection from the same file works: a read reaches the portal
        let (rerr, rout) = tool(&m, "b24_read", json!({"method": "user.current"})).await;
        m.cancel().await.ok();
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4 && code2 == 4,
            format!(
                "`b24 {} call crm.lead.delete|add` exit {code}/{code2}: {cli_out} / {cli2}",
                ex.join(" ")
            ),
        );
        t.check(
            name,
            err && err2,
            format!(
                "b24 mcp {}: b24_write not refused: {mcp_out} / {mcp2}",
                ex.join(" ")
            ),
        );
        // A TOML array where a comma list is expected is not a glob: the profile's policy
        // cannot be read, so every call is refused (fail closed), the read included.
        let broken = name.contains("TOML array");
        let allowed = if broken { 0 } else { 1 };
        t.check(
            name,
            rerr == broken,
            format!("read through the same source: error {rerr}: {rout}"),
        );
        t.check(
            name,
            reached == allowed,
            format!(
                "{} write request(s) reached the portal",
                reached.saturating_sub(allowed)
            ),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed,
        });
    }
}

pub(super) async fn unparsable_policy(s: Suite<'_>, t: &mut Table) {
    let Suite { sb, secrets, .. } = s;
    // A config-dir policy that does not parse refuses every call, reads too, naming file:line.
    for (name, text) in [
        (
            "policy: invalid glob",
            "read_only = false\ndeny = [\"crm.{lead\"]\n",
        ),
        (
            "policy: unknown key (typo)",
            "deny = [\"crm.lead.delete\"]\nreadonly = true\n",
        ),
    ] {
        let e = Env::webhook(sb);
        std::fs::write(e.config_dir().join("policy.toml"), text).unwrap();
        let before = seen(sb);
        let (code, cli_out, all) = cli(&e, &["call", "crm.lead.list"], secrets).await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_read", json!({"method": "crm.lead.list"})).await;
        m.cancel().await.ok();
        let reached = seen(sb) - before;
        t.check(
            name,
            code == 4 && all.contains("policy.toml:2"),
            format!("exit {code}, message without policy.toml:2: {cli_out}"),
        );
        t.check(
            name,
            err && mcp_out.contains("policy.toml:2"),
            format!("b24_read: {mcp_out}"),
        );
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
