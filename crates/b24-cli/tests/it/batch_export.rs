//! `b24 batch`, `b24 export` and `b24 list` end to end against the sandbox: outcomes and exit
//! codes, exactly-once export under seeded faults, and a SIGKILL/resume with a checkpoint.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

fn lines(o: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn ids(v: &[Value]) -> BTreeMap<u64, u32> {
    let mut m = BTreeMap::new();
    for it in v {
        let id = it["ID"].as_str().unwrap().parse::<u64>().unwrap();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_reports_every_command_and_keeps_successes() {
    let sb = sandbox_with_leads(10).await;
    let env = Env::webhook(&sb);
    let mut input = String::new();
    for i in 0..60 {
        input.push_str(&format!(
            "{{\"key\":\"g{i}\",\"method\":\"crm.lead.get\",\"params\":{{\"id\":{}}}}}\n",
            i % 12 + 1
        ));
    }
    input.push_str("{\"key\":\"upd\",\"method\":\"crm.lead.update\",\"params\":{\"id\":\"$result[g11][ID]\",\"fields\":{\"TITLE\":\"x\"}}}\n");
    input.push_str("\"user.current\"\n");
    let o = env
        .run_stdin(&["batch", "-", "--confirm-write"], &input)
        .await;
    assert_eq!(code(&o), 1, "partial failure: {}", stderr(&o));
    let out = lines(&o.stdout);
    assert_eq!(out.len(), 62);
    assert_eq!(out[0]["key"], "g0");
    assert_eq!(out[0]["status"], "ok");
    assert_eq!(out[0]["result"]["ID"], "1");
    // ids 11 and 12 do not exist (10 leads)
    assert_eq!(out[10]["status"], "error");
    assert!(out[10]["error"]["code"].is_string());
    assert_eq!(out[60]["key"], "upd");
    assert_eq!(out[60]["error"]["code"], "REFERENCE_FAILED");
    assert_eq!(out[61]["status"], "ok");
    assert_eq!(out.iter().filter(|l| l["status"] == "ok").count(), 51);
    assert_eq!(calls_of(&sb, "crm.lead.update"), 0);
    assert!(stderr(&o).contains("62 commands"), "{}", stderr(&o));

    // --halt: the first failure stops everything after it.
    let f = env.dir.path().join("cmds.json");
    std::fs::write(&f, r#"{"a": {"method": "crm.lead.get", "params": {"id": 1}}, "b": "crm.lead.get?id=999", "c": "user.current"}"#).unwrap();
    let o = env.run(&["batch", f.to_str().unwrap(), "--halt"]).await;
    assert_eq!(code(&o), 1);
    let out = lines(&o.stdout);
    let st: Vec<&str> = out.iter().map(|l| l["status"].as_str().unwrap()).collect();
    assert_eq!(st, vec!["ok", "error", "not_executed"]);

    // All ok → 0; --dry-run sends nothing.
    let before = sb.stats().requests;
    let o = env
        .run(&[
            "batch",
            "--cmd",
            r#"{"method":"user.current"}"#,
            "--cmd",
            r#""server.time""#,
            "--dry-run",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(lines(&o.stdout).len(), 2);
    assert_eq!(sb.stats().requests, before);
    let o = env
        .run(&[
            "batch",
            "--cmd",
            r#"{"method":"user.current"}"#,
            "--cmd",
            r#""server.time""#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Bad input is a usage error.
    let o = env.run_stdin(&["batch", "-"], "{\"method\": 5}").await;
    assert_eq!(code(&o), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_under_seeded_faults_emits_every_item_once() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 7_000,
        seed: 11,
        faults: "rate503=0.05,rate500=0.01,drop=0.01,expire=0.005"
            .parse()
            .unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::oauth(&sb);
    let o = env
        .run(&["export", "crm.lead.list", "--select", "ID,TITLE"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let m = ids(&lines(&o.stdout));
    assert_eq!(m.len(), 7_000);
    assert!(m.values().all(|&n| n == 1));
    assert!(stderr(&o).contains("7000 items"), "{}", stderr(&o));
    // list --all is the same export; list alone is one page.
    let o = env.run(&["list", "crm.lead.list", "--all", "-q"]).await;
    assert_eq!(code(&o), 0);
    assert_eq!(ids(&lines(&o.stdout)).len(), 7_000);
    assert!(
        o.stderr.is_empty() || !stderr(&o).contains("items in"),
        "--quiet"
    );
    let o = env.run(&["list", "crm.lead.list", "--start", "50"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["items"].as_array().unwrap().len(), 50);
    assert_eq!(v["total"], 7_000);
    // The policy applies to exports like to any call.
    let before = sb.stats().requests;
    let o = env
        .run(&["export", "crm.lead.list", "--deny", "crm.lead.*"])
        .await;
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(sb.stats().requests, before, "nothing sent");
    // offset strategy gives the same items
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--strategy",
            "offset",
            "--filter",
            r#"{"<=ID": 300}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(ids(&lines(&o.stdout)).len(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_resume_with_checkpoint_emit_each_item_once() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 30_000,
        faults: "latency=150ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let cp = env.dir.path().join("leads.cp");
    let out1 = env.dir.path().join("out1.ndjson");
    let args = [
        "export",
        "crm.lead.list",
        "--checkpoint",
        cp.to_str().unwrap(),
        "--concurrency",
        "2",
        "--select",
        "ID",
    ];
    let mut c = env.cmd(&args);
    c.stdout(std::fs::File::create(&out1).unwrap())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read(&out1)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if n >= 5_000 {
            break;
        }
        assert!(Instant::now() < deadline, "export made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "export ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let first = lines(&std::fs::read(&out1).unwrap());
    assert!(first.len() < 30_000, "killed mid-export");
    let o = env.run(&args).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed"), "{}", stderr(&o));
    let second = lines(&o.stdout);
    let mut all = ids(&first);
    for (k, n) in ids(&second) {
        *all.entry(k).or_insert(0) += n;
    }
    assert_eq!(all.len(), 30_000);
    let dup: Vec<_> = all.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(dup.is_empty(), "duplicates: {dup:?}");
    // A third run finds the checkpoint complete and prints nothing.
    let o = env.run(&args).await;
    assert_eq!(code(&o), 0);
    assert!(o.stdout.is_empty());
}

/// Requests for `method` in the sandbox's request log (a batch counts once per sub-call).
fn logged(sb: &Sandbox, method: &str) -> usize {
    sb.request_log()
        .iter()
        .map(|r| usize::from(r.method == method) + r.batch.iter().filter(|m| *m == method).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_stops_after_n_items_and_fetches_no_more_pages() {
    let sb = sandbox_with_leads(500).await;
    let env = Env::webhook(&sb);
    let newest = r#"{"order":{"ID":"DESC"},"select":["ID","TITLE"]}"#;
    let before = logged(&sb, "crm.lead.list");
    let o = env
        .run(&["list", "crm.lead.list", "-p", newest, "--limit", "5"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    let got: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ID"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec!["500", "499", "498", "497", "496"], "the 5 newest");
    assert_eq!(v["total"], 500);
    assert_eq!(v["next"], 5, "where the following items start");
    assert_eq!(logged(&sb, "crm.lead.list") - before, 1, "one page");

    // 120 items: three pages of 50, not the whole list.
    let before = logged(&sb, "crm.lead.list");
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--limit",
            "120",
            "--select",
            "ID",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let items = lines(&o.stdout);
    assert_eq!(items.len(), 120);
    assert_eq!(ids(&items).len(), 120);
    assert_eq!(logged(&sb, "crm.lead.list") - before, 3);
    // list --all --limit is the same; a limit past the end stops at the end.
    let before = logged(&sb, "crm.lead.list");
    let o = env
        .run(&["list", "crm.lead.list", "--all", "--limit", "100000", "-q"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(ids(&lines(&o.stdout)).len(), 500);
    assert_eq!(logged(&sb, "crm.lead.list") - before, 10);
    // --limit into a file, as csv.
    let f = env.dir.path().join("seven.csv");
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--limit",
            "7",
            "--select",
            "ID,TITLE",
            "-o",
            "csv",
            "--out",
            f.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.lines().count(), 8, "{text}");
    assert!(text.starts_with("ID,TITLE\n"), "{text}");
    // --limit with a checkpoint would record a partial export as progress: refused.
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--limit",
            "3",
            "--checkpoint",
            "x.cp",
        ])
        .await;
    assert_eq!(code(&o), 2);
}

mod out_file;
