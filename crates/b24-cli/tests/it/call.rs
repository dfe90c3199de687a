//! `b24 call` end to end against the sandbox: output, exit codes, the shared limiter, secrets.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_result_and_raw_envelope() {
    let sb = sandbox_with_leads(60).await;
    let env = Env::webhook(&sb);
    let o = env
        .run(&["call", "crm.lead.list", "--params", r#"{"select":["ID"]}"#])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o).as_array().unwrap().len(), 50);
    let o = env.run(&["call", "crm.lead.list", "--raw"]).await;
    let v = json(&o);
    assert_eq!(
        (v["next"].as_u64(), v["total"].as_u64()),
        (Some(50), Some(60))
    );
    assert!(v["time"]["operating"].is_number());
    // params from stdin and from a file
    let o = env
        .run_stdin(&["call", "crm.lead.get", "--params", "-"], r#"{"id": 7}"#)
        .await;
    assert_eq!(json(&o)["ID"], "7");
    let f = env.dir.path().join("p.json");
    std::fs::write(&f, r#"{"ID": 8}"#).unwrap();
    let o = env
        .run(&[
            "call",
            "crm.lead.get",
            "--params",
            &format!("@{}", f.display()),
        ])
        .await;
    assert_eq!(json(&o)["ID"], "8");
}

/// Logs on stderr are plain text when stderr is not a terminal (an agent host or a log file
/// reads them): no colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn logs_in_a_pipe_carry_no_colour_codes() {
    let sb = sandbox_with_leads(3).await;
    let env = Env::webhook(&sb);
    let o = env.run(&["-vvv", "call", "crm.lead.list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.trim().is_empty(), "-vvv logs something");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_map_to_exit_codes() {
    let sb = sandbox_with_leads(1).await;
    let env = Env::webhook(&sb);
    // Unknown methods count as destructive until proven otherwise.
    let o = env.run(&["call", "no.such.method"]).await;
    assert_eq!(code(&o), 4);
    let o = env
        .run(&["call", "no.such.method", "--confirm-destructive"])
        .await;
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("ERROR_METHOD_NOT_FOUND"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "errors never go to stdout");
    let o = env
        .run(&["call", "crm.lead.get", "--params", "{not json"])
        .await;
    assert_eq!(code(&o), 2);
    let mut bad = Env::webhook(&sb);
    bad.set(
        "B24_WEBHOOK_URL",
        &sb.info()
            .webhook_url
            .replace(&sb.info().webhook_code, "wrongcode1234567"),
    );
    let o = bad.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("NO_AUTH_FOUND"));
    let o = Env::bare().run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("B24_WEBHOOK_URL"));
    let mut insecure = Env::bare();
    insecure.set(
        "B24_WEBHOOK_URL",
        "http://portal.example.com/rest/1/abcdefabcdef/",
    );
    let o = insecure.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("plain http"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn write_timeout_exits_7_without_resending() {
    let sb = sandbox(SandboxConfig {
        limits: false,
        ..Default::default()
    })
    .await;
    sb.set_faults("timeout=1".parse().unwrap());
    let mut env = Env::webhook(&sb);
    env.set("B24_TIMEOUT_SECS", "0.5");
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"t"}}"#,
            "--confirm-write",
            "--idempotency-key",
            "order-77",
        ])
        .await;
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("outcome unknown") && err.contains("not resent"),
        "{err}"
    );
    assert_eq!(calls_of(&sb, "crm.lead.add"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_call_refreshes_once_across_processes() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::oauth(&sb);
    sb.expire_access_tokens();
    // Eight processes hit expired_token at once; the file lock lets exactly one refresh.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut c = env.cmd(&["call", "profile"]);
        handles.push(std::thread::spawn(move || c.output().unwrap()));
    }
    for h in handles {
        let o = h.join().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert_eq!(sb.stats().refreshes, 1);
}

/// Two processes sharing the SQLite limiter never push the portal's bucket over capacity;
/// with per-process limiters the same load draws 503s (so the test can tell the difference).
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_one_bucket() {
    async fn load(limiter: &str) -> b24_sandbox::Stats {
        let sb = sandbox(SandboxConfig::default()).await;
        let mut env = Env::webhook(&sb);
        env.set("B24_RATE_LIMITER", limiter);
        let mut threads = Vec::new();
        for _ in 0..2 {
            let cmds: Vec<_> = (0..36).map(|_| env.cmd(&["call", "server.time"])).collect();
            threads.push(std::thread::spawn(move || {
                for mut c in cmds {
                    let o = c.output().unwrap();
                    assert_eq!(
                        o.status.code(),
                        Some(0),
                        "{}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }));
        }
        for t in threads {
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap();
        }
        sb.stats()
    }
    let shared = load("sqlite").await;
    assert_eq!(shared.count_503, 0, "shared limiter: {shared:?}");
    assert!(shared.max_bucket_level <= 50.0);
    assert_eq!(shared.methods["server.time"], 72);
    // Control: processes that each keep their own bucket overrun the portal.
    let separate = load("memory").await;
    assert!(
        separate.count_503 > 0,
        "per-process limiters should have drawn 503s: {separate:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_process() {
    let sb = sandbox_with_leads(5).await;
    let i = sb.info().clone();
    let secrets = vec![
        i.webhook_code.clone(),
        i.access_token.clone(),
        i.refresh_token.clone(),
        i.client_secret.clone(),
    ];
    let mut outputs = Vec::new();
    let wh = Env::webhook(&sb);
    let oa = Env::oauth(&sb);
    for args in [
        vec!["call", "crm.lead.list", "--raw"],
        vec!["-vvv", "call", "user.current"],
        vec!["call", "no.such.method"],
        vec![
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--dry-run",
        ],
        vec![
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ],
    ] {
        outputs.push(wh.run(&args).await);
        outputs.push(oa.run(&args).await);
    }
    sb.expire_access_tokens();
    outputs.push(oa.run(&["-vvv", "call", "profile"]).await);
    for o in &outputs {
        assert_no_secrets("stdout", &o.stdout, &secrets);
        assert_no_secrets("stderr", &o.stderr, &secrets);
    }
    for env in [&wh, &oa] {
        for f in files_under(&env.state_dir()) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("tokens-") {
                continue; // the token store holds tokens by design (0600)
            }
            assert_no_secrets(
                &f.display().to_string(),
                &std::fs::read(&f).unwrap(),
                &secrets,
            );
        }
    }
}

/// Parse csv output into its header and rows (with the csv crate: quoting is checked too).
fn csv_rows(o: &std::process::Output) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_reader(o.stdout.as_slice());
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn output_formats_json_ndjson_csv_table() {
    let sb = sandbox_with_leads(60).await;
    let env = Env::webhook(&sb);
    // A title that needs quoting in csv.
    let o = env
        .run(&[
            "call",
            "crm.lead.update",
            "--confirm-write",
            "-p",
            r#"{"id": 3, "fields": {"TITLE": "Smith, \"Jo\"\nline two"}}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let sel = r#"{"select":["TITLE","ID"],"filter":{"<=ID":5}}"#;

    // JSON: compact in a pipe, pretty with --pretty; the same document either way.
    let o = env.run(&["call", "crm.lead.list", "-p", sel]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "compact: {}", stdout(&o));
    let compact = json(&o);
    let o = env
        .run(&["call", "crm.lead.list", "-p", sel, "--pretty"])
        .await;
    assert!(stdout(&o).lines().count() > 10, "pretty: {}", stdout(&o));
    assert_eq!(json(&o), compact);

    // CSV: the selected order, proper quoting, one row per record.
    let o = env
        .run(&["call", "crm.lead.list", "-p", sel, "-o", "csv"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["TITLE", "ID"]);
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[2], vec!["Smith, \"Jo\"\nline two", "3"]);
    // list and export: the same columns; --select names them.
    let o = env
        .run(&[
            "list",
            "crm.lead.list",
            "--select",
            "TITLE,ID",
            "-o",
            "csv",
            "-p",
            r#"{"filter":{"<=ID":5}}"#,
        ])
        .await;
    assert_eq!(csv_rows(&o).0, vec!["TITLE", "ID"]);
    assert_eq!(csv_rows(&o).1.len(), 5);
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--select",
            "TITLE",
            "-o",
            "csv",
            "--filter",
            r#"{"<=ID":5}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["ID", "TITLE"], "the ID is exported, so it is shown");
    assert_eq!(rows.len(), 5);

    // NDJSON: one record a line.
    let o = env
        .run(&["list", "crm.lead.list", "-p", sel, "-o", "ndjson"])
        .await;
    let ls: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ls.len(), 5);
    assert_eq!(ls[0]["ID"], "1");

    // Table: fitted to COLUMNS, every record shown.
    let mut narrow = Env::webhook(&sb);
    narrow.set("COLUMNS", "50");
    let o = narrow
        .run(&[
            "call",
            "crm.lead.list",
            "-p",
            r#"{"select":["ID","TITLE","NAME","LAST_NAME","STATUS_ID","SOURCE_ID","OPPORTUNITY"],"filter":{"<=ID":5}}"#,
            "-o",
            "table",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.contains("TITLE"), "{t}");
    for l in t.lines() {
        assert!(l.chars().count() <= 50, "wider than 50: {l:?}\n{t}");
    }
    for id in 1..=5 {
        assert!(t.contains(&format!(" {id} ")), "row {id}: {t}");
    }

    // Records of other commands.
    let o = env
        .run(&["methods", "--search", "crm.deal.", "-o", "csv"])
        .await;
    let (h, rows) = csv_rows(&o);
    assert_eq!(h[0], "name");
    assert!(rows.iter().any(|r| r[0] == "crm.deal.add"));
    let o = env.run(&["audit", "tail", "-n", "3", "-o", "json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o).as_array().unwrap().len(), 3);
    let o = env
        .run_stdin(
            &["batch", "-", "-o", "csv"],
            "\"crm.lead.get?id=1\"\n\"crm.lead.get?id=999\"\n",
        )
        .await;
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["key", "status", "result", "error", "reason"]);
    assert_eq!(rows[0][1], "ok");
    assert_eq!(rows[1][1], "error");
    // An unknown format is a usage error.
    let o = env.run(&["call", "user.current", "-o", "xml"]).await;
    assert_eq!(code(&o), 2);
}

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

#[tokio::test(flavor = "multi_thread")]
async fn portal_errors_carry_their_fix() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 3,
        webhook_scopes: Some(vec!["crm".into(), "user".into()]),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    // A deleted record: no "<empty code>", the meaning and where to look.
    let o = env
        .run(&["call", "crm.lead.get", "-p", r#"{"id": 999}"#])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(!e.contains("<empty code>"), "{e}");
    assert!(
        e.contains("does not exist") && e.contains("b24 list crm.lead.list"),
        "{e}"
    );
    // A scope the webhook lacks: which one, and where to add it.
    let narrow = sandbox(SandboxConfig {
        seed_leads: 1,
        webhook_scopes: Some(vec!["user".into()]),
        ..Default::default()
    })
    .await;
    let o = Env::webhook(&narrow).run(&["call", "crm.lead.list"]).await;
    let e = stderr(&o);
    assert!(e.contains("insufficient_scope"), "{e}");
    assert!(e.contains("lacks the `crm` scope"), "{e}");
    assert!(e.contains("Inbound webhook"), "{e}");
    // An application-only method from a webhook: OAuth, and how.
    let o = env.run(&["call", "event.get"]).await;
    let e = stderr(&o);
    assert!(e.contains("WRONG_AUTH_TYPE"), "{e}");
    assert!(
        e.contains("B24_AUTH_MODE=oauth") && e.contains("b24 auth login"),
        "{e}"
    );
    // A wrong (or revoked) webhook code.
    let mut bad = Env::webhook(&sb);
    bad.set(
        "B24_WEBHOOK_URL",
        &sb.info()
            .webhook_url
            .replace(&sb.info().webhook_code, "wrongcode1234567"),
    );
    let o = bad.run(&["call", "user.current"]).await;
    let e = stderr(&o);
    assert!(e.contains("NO_AUTH_FOUND") && e.contains("revoked"), "{e}");
    assert!(e.contains("copy its URL again"), "{e}");
    // In a batch, the failed command's line carries the fix too.
    let o = env
        .run_stdin(&["batch", "-"], "\"crm.lead.get?id=999\"\n")
        .await;
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(
        line["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("b24 list crm.lead.list"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_portals_fail_fast_with_the_likely_cause() {
    let sb = sandbox_with_leads(1).await;
    // A port where nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // https spoken to the sandbox's plain-http port: the TLS handshake fails.
    let http_port = url::Url::parse(sb.base_url()).unwrap().port().unwrap();
    for (url, cause) in [
        (
            "https://no-such-portal.invalid/rest/1/abcdefabcdef/".to_string(),
            "DNS",
        ),
        (
            format!("http://127.0.0.1:{port}/rest/1/abcdefabcdef/"),
            "refused",
        ),
        (
            format!("https://127.0.0.1:{http_port}/rest/1/abcdefabcdef/"),
            "TLS",
        ),
    ] {
        let mut env = Env::bare();
        env.set("B24_WEBHOOK_URL", &url);
        let t = std::time::Instant::now();
        let o = env.run(&["call", "user.current"]).await;
        let took = t.elapsed();
        assert_eq!(code(&o), 6, "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(cause), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains("not retried"), "{url}: {}", stderr(&o));
        assert!(took.as_secs_f64() < 3.0, "{url}: took {took:?}");
    }
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
