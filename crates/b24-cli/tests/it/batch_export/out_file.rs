//! `b24 export --out FILE` with a checkpoint: the file and the checkpoint agree after random
//! SIGKILLs, `--out` never overwrites the checkpoint or b24's own records, and a resume refuses a
//! file edited since.
//!
//! A module of `tests/it/batch_export.rs`, so it uses its helpers.

use super::*;

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
