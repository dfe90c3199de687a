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

#[tokio::test(flavor = "multi_thread")]
async fn out_file_and_checkpoint_agree_after_random_sigkills() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 30_000,
        faults: "latency=150ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let cp = env.dir.path().join("leads.cp");
    let file = env.dir.path().join("leads.ndjson");
    let args = [
        "export",
        "crm.lead.list",
        "--out",
        file.to_str().unwrap(),
        "--checkpoint",
        cp.to_str().unwrap(),
        "--concurrency",
        "1",
        "--select",
        "ID,TITLE",
        "-q",
    ];
    // A small deterministic generator for the kill moments (no extra dependency).
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut kills = 0;
    let mut finished = false;
    let mut injected = false;
    for round in 0..40 {
        let mut c = env.cmd(&args);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let wait = Duration::from_millis(50 + rnd(650));
        let deadline = Instant::now() + wait;
        let mut done = None;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                done = Some(st);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        match done {
            Some(st) => {
                assert!(st.success(), "round {round}: export failed: {st:?}");
                finished = true;
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL, at a random moment
                child.wait().unwrap();
                kills += 1;
            }
        }
        // After every kill the part of the file the checkpoint vouches for is whole lines,
        // each item once (bytes past it belong to a page the resume fetches again).
        let text = std::fs::read(&file).unwrap_or_default();
        let vouched = match std::fs::read(&cp) {
            Ok(b) => {
                let c: Value = serde_json::from_slice(&b).unwrap();
                c["output"]["bytes"].as_u64().unwrap() as usize
            }
            Err(_) => 0,
        };
        assert!(
            vouched <= text.len(),
            "round {round}: file shorter than its checkpoint"
        );
        let prefix = &text[..vouched];
        assert!(
            prefix.is_empty() || prefix.ends_with(b"\n"),
            "round {round}: torn line"
        );
        let seen = ids(&lines(prefix));
        assert!(seen.values().all(|&n| n == 1), "round {round}: duplicates");
        // Once, play the worst moment by hand: a page (here a duplicate and a torn line) in
        // the file whose checkpoint never became visible. The resume must cut it off.
        if vouched > 0 && !injected {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(b"{\"ID\":\"1\",\"TITLE\":\"dup\"}\n{\"ID\":\"2")
                .unwrap();
            injected = true;
        }
    }
    assert!(injected, "no kill after a checkpoint");
    if !finished {
        // Let the last run finish undisturbed.
        let o = env.run(&args).await;
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert!(kills >= 3, "only {kills} kills happened");
    let all = lines(&std::fs::read(&file).unwrap());
    let m = ids(&all);
    assert_eq!(m.len(), 30_000, "every item, after {kills} kills");
    let dup: Vec<_> = m.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(dup.is_empty(), "duplicates after {kills} kills: {dup:?}");
    assert_eq!(all.len(), 30_000);
    eprintln!("{kills} kills");
    // A finished export is not redone, and the file is left alone.
    let len = std::fs::metadata(&file).unwrap().len();
    let o = env.run(&args).await;
    assert_eq!(code(&o), 0);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    // csv resumes too: the header once, every row once.
    let csv_file = env.dir.path().join("leads.csv");
    let csv_cp = env.dir.path().join("csv.cp");
    let csv_args = [
        "export",
        "crm.lead.list",
        "--out",
        csv_file.to_str().unwrap(),
        "--checkpoint",
        csv_cp.to_str().unwrap(),
        "--concurrency",
        "1",
        "--select",
        "ID,TITLE",
        "-o",
        "csv",
        "-q",
    ];
    let mut child = env.cmd(&csv_args).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !csv_cp.exists() {
        assert!(Instant::now() < deadline, "no checkpoint written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = env.run(&csv_args).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut r = csv::Reader::from_path(&csv_file).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["ID", "TITLE"]
    );
    let mut seen = std::collections::BTreeSet::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        assert!(
            seen.insert(rec[0].parse::<u64>().unwrap()),
            "row {} twice",
            &rec[0]
        );
    }
    assert_eq!(seen.len(), 30_000);
    // The checkpoint names its file: resuming it to stdout is refused, not silently split.
    std::fs::remove_file(&file).unwrap();
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--checkpoint",
            cp.to_str().unwrap(),
            "--concurrency",
            "2",
            "--select",
            "ID,TITLE",
        ])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
}

/// Hostile: `--out` naming the checkpoint itself, or b24's own audit log (directly, through
/// a symlink, through a hard link). Before, the first ended "done: 5 items" with the items
/// replaced by the checkpoint, the second truncated the audit log (68 records gone, `audit
/// verify` failing, `b24 settle` refusing to act). Each is refused before anything is
/// fetched: the sandbox's log shows no list request, and the audit log keeps every record.
#[tokio::test(flavor = "multi_thread")]
async fn out_never_overwrites_the_checkpoint_or_b24s_records() {
    let sb = sandbox_with_leads(5).await;
    let env = Env::webhook(&sb);
    // Some records in the audit log first.
    let o = env.run(&["call", "crm.lead.list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let audit = files_under(&env.state_dir())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "audit.jsonl"))
        .expect("audit log");
    let before = std::fs::read(&audit).unwrap();
    assert!(!before.is_empty());
    let d = env.dir.path();
    let cp = d.join("same.cp");
    let sym = d.join("sym.ndjson");
    std::os::unix::fs::symlink(&audit, &sym).unwrap();
    let hard = d.join("hard.ndjson");
    std::fs::hard_link(&audit, &hard).unwrap();
    let dangling = d.join("dangling.ndjson");
    std::os::unix::fs::symlink(env.state_dir().join("new-file"), &dangling).unwrap();
    let lists = logged(&sb, "crm.lead.list");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--out".into(),
            cp.display().to_string(),
            "--checkpoint".into(),
            cp.display().to_string(),
        ],
        vec!["--out".into(), audit.display().to_string()],
        vec!["--out".into(), sym.display().to_string()],
        vec!["--out".into(), hard.display().to_string()],
        vec!["--out".into(), dangling.display().to_string()],
        vec![
            "--out".into(),
            sym.display().to_string(),
            "--limit".into(),
            "2".into(),
        ],
    ];
    for extra in &cases {
        let mut args = vec!["export", "crm.lead.list"];
        args.extend(extra.iter().map(String::as_str));
        let o = env.run(&args).await;
        assert_eq!(code(&o), 2, "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("somewhere else"),
            "{extra:?}: {}",
            stderr(&o)
        );
        let o = env
            .run(&[&["list", "crm.lead.list", "--all"][..], &args[2..]].concat())
            .await;
        assert_eq!(code(&o), 2, "list {extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("somewhere else"),
            "list {extra:?}: {}",
            stderr(&o)
        );
    }
    // A checkpoint among b24's records (renamed over its path): refused too.
    for cpath in [audit.clone(), env.state_dir().join("guard.db")] {
        let o = env
            .run(&[
                "export",
                "crm.lead.list",
                "--checkpoint",
                cpath.to_str().unwrap(),
            ])
            .await;
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(stderr(&o).contains("somewhere else"), "{}", stderr(&o));
    }
    assert_eq!(logged(&sb, "crm.lead.list"), lists, "nothing fetched");
    let after = std::fs::read(&audit).unwrap();
    assert!(after.starts_with(&before), "the audit log lost records");
    assert!(!env.state_dir().join("new-file").exists());
    let o = env.run(&["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    // An ordinary --out still works, and resumes with its checkpoint.
    let out = d.join("leads.ndjson");
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--out",
            out.to_str().unwrap(),
            "--checkpoint",
            cp.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 5);
}

/// Hostile: the `--out` file edited or replaced between a killed export and its resume. The
/// checkpoint vouched for its first N bytes by length only, so a file of at least N bytes —
/// a line changed in place, or another file put there — was cut to N and continued, the
/// result mixing the two. Now the resume is refused (exit 2) and the file left as it is; an
/// untouched file still resumes to every item once.
#[tokio::test(flavor = "multi_thread")]
async fn a_resume_refuses_an_out_file_edited_since() {
    let sb = sandbox(SandboxConfig {
        seed_leads: 3_000,
        faults: "latency=100ms".parse().unwrap(),
        ..Default::default()
    })
    .await;
    let env = Env::webhook(&sb);
    let cp = env.dir.path().join("leads.cp");
    let file = env.dir.path().join("leads.ndjson");
    let args = [
        "export",
        "crm.lead.list",
        "--out",
        file.to_str().unwrap(),
        "--checkpoint",
        cp.to_str().unwrap(),
        "--concurrency",
        "1",
        "--select",
        "ID,TITLE",
        "-q",
    ];
    // Stop it part way (SIGKILL once a few pages are in).
    let mut child = env
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&cp).map(|m| m.len()).unwrap_or(0) == 0
        || std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count()
            < 150
    {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let good = std::fs::read(&file).unwrap();
    // One ID changed in place: same length, other content.
    let text = String::from_utf8(good.clone()).unwrap();
    let edited = text.replacen("\"ID\":\"1\"", "\"ID\":\"9\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&file, &edited).unwrap();
    let o = env.run(&args).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        edited,
        "left as it is"
    );
    // Another, longer file in its place.
    let other = "x".repeat(good.len() + 100);
    std::fs::write(&file, &other).unwrap();
    let o = env.run(&args).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), other);
    // The real file back: the resume finishes, every lead once.
    std::fs::write(&file, &good).unwrap();
    let o = env.run(&args).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let items = lines(&std::fs::read(&file).unwrap());
    let seen = ids(&items);
    assert_eq!(seen.len(), 3_000);
    assert!(seen.values().all(|n| *n == 1));
}
