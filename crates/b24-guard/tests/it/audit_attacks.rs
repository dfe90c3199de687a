//! Tampering with the audit log: every attack must make `verify` fail and name where.

use std::path::Path;

use b24_guard::audit::{AuditLog, VerifyReport};
use serde_json::json;

use crate::fields;

fn log_with(dir: &Path, n: usize) -> AuditLog {
    let log = AuditLog::open(dir.join("audit.jsonl"), dir);
    for i in 0..n {
        log.append_record(fields(&format!("crm.lead.get#{i}"), json!({"n": i})))
            .unwrap();
    }
    log
}

fn problem(r: &VerifyReport) -> String {
    r.problem
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| panic!("verify passed but should not: {r:?}"))
}

fn lines(log: &AuditLog) -> Vec<String> {
    std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn an_intact_log_verifies_and_names_its_head() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 5);
    let r = log.verify_report().unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((r.records, r.head_seq), (5, Some(5)));
    assert_eq!(log.verify().unwrap(), Ok(5));
    let seqs: Vec<u64> = log
        .tail(10)
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[test]
fn an_edited_record_is_named_by_line_and_seq() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 5);
    let text = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(log.path(), text.replace("crm.lead.get#2", "crm.lead.del#2")).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.starts_with("line 3 (seq 3)"), "{p}");
    assert!(p.contains("changed"), "{p}");
}

#[test]
fn a_removed_record_is_named() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 5);
    let l = lines(&log);
    std::fs::write(log.path(), format!("{}\n{}\n", l[0], l[2..].join("\n"))).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.starts_with("line 2 (seq 3)"), "{p}");
    assert!(p.contains("removed"), "{p}");
}

#[test]
fn a_cut_tail_fails_and_stays_failed_after_more_appends() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 5);
    let l = lines(&log);
    std::fs::write(log.path(), format!("{}\n", l[..3].join("\n"))).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("tail was cut") && p.contains("seq 4..=5"), "{p}");
    // Auditing goes on (from the head), and the cut stays visible.
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 7, "a log_cut marker (6) then the record (7)");
    assert!(a.notes[0].contains("cut or emptied"), "{:?}", a.notes);
    let p = problem(&log.verify_report().unwrap());
    assert!(p.starts_with("line 4 (seq 6)"), "{p}");
    assert!(p.contains("tampering"), "{p}");
}

#[test]
fn a_cut_inside_the_last_record_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 3);
    let len = std::fs::metadata(log.path()).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(log.path())
        .unwrap();
    f.set_len(len - 10).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("tail was cut"), "{p}");
}

#[test]
fn an_emptied_log_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 4);
    std::fs::write(log.path(), "").unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("emptied"), "{p}");
    log.append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.starts_with("line 1 (seq 5)"), "{p}");
}

#[test]
fn a_deleted_log_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 4);
    std::fs::remove_file(log.path()).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("deleted") && p.contains("4 records"), "{p}");
}

#[test]
fn a_deleted_or_edited_head_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 4);
    let head = std::fs::read_to_string(log.head_path()).unwrap();
    std::fs::write(log.head_path(), head.replace("\"seq\":4", "\"seq\":2")).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("head file") && p.contains("invalid"), "{p}");
    std::fs::remove_file(log.head_path()).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("head file") && p.contains("missing"), "{p}");
    // Appending goes on from the last valid record, and says what it found.
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 6);
    let p = problem(&log.verify_report().unwrap());
    assert!(
        p.starts_with("line 5 (seq 5)") && p.contains("missing"),
        "{p}"
    );
}

#[test]
fn a_chain_recomputed_without_the_key_fails_at_the_first_record() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 3);
    // The attacker rebuilds the whole log and its head with a key of their own, leaving out
    // the record they want gone: every record and the head are self-consistent.
    let forged = tempfile::tempdir().unwrap();
    let fake = AuditLog::open(forged.path().join("audit.jsonl"), forged.path());
    for r in log.tail(10).unwrap().iter().filter(|r| r["seq"] != 2) {
        fake.append_record(fields(r["method"].as_str().unwrap(), json!({"n": r["n"]})))
            .unwrap();
    }
    assert!(fake.verify_report().unwrap().is_ok());
    std::fs::copy(fake.path(), log.path()).unwrap();
    std::fs::copy(fake.head_path(), log.head_path()).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(
        p.contains("line 1 (seq 1)"),
        "the forged chain is caught: {p}"
    );
    // Even with the head file left alone the records themselves fail.
    let d2 = tempfile::tempdir().unwrap();
    let real = log_with(d2.path(), 2);
    std::fs::copy(fake.path(), real.path()).unwrap();
    let p = problem(&real.verify_report().unwrap());
    assert!(p.starts_with("line 1 (seq 1)"), "{p}");
    assert!(p.contains("without the key"), "{p}");
}

#[test]
fn a_chain_recomputed_with_plain_sha256_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 2);
    // The old scheme's chain (unkeyed SHA-256) written with the v2 field names.
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for mut r in log.tail(10).unwrap() {
        let o = r.as_object_mut().unwrap();
        o.remove("mac");
        o.insert("prev".into(), json!(prev));
        let c = b24_guard::store::canonical(&r);
        let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(c.as_bytes()));
        r["mac"] = json!(h);
        prev = h;
        out.push_str(&format!("{r}\n"));
    }
    std::fs::write(log.path(), out).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.starts_with("line 1 (seq 1)"), "{p}");
}

#[test]
fn a_missing_key_is_reported_not_ignored() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 2);
    std::fs::remove_file(d.path().join("guard.key")).unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(p.contains("key"), "{p}");
}

#[test]
fn an_unsealed_foreign_line_inside_the_log_fails() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 3);
    let l = lines(&log);
    std::fs::write(
        log.path(),
        format!(
            "{}\n{{\"note\":\"inserted\"}}\n{}\n",
            l[0],
            l[1..].join("\n")
        ),
    )
    .unwrap();
    let p = problem(&log.verify_report().unwrap());
    assert!(
        p.starts_with("line 2:") && p.contains("not an audit record"),
        "{p}"
    );
}

#[test]
fn deleting_key_and_head_does_not_launder_edited_history() {
    let d = tempfile::tempdir().unwrap();
    let log = log_with(d.path(), 3);
    let text = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(log.path(), text.replace("crm.lead.get#1", "crm.lead.zzz#1")).unwrap();
    std::fs::remove_file(d.path().join("guard.key")).unwrap();
    std::fs::remove_file(log.head_path()).unwrap();
    // The next append gets a new key; the old records no longer check out under it and
    // must not be sealed away as garbage.
    let fresh = AuditLog::open(log.path(), d.path());
    let a = fresh
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert!(a.notes[0].contains("missing"), "{:?}", a.notes);
    let p = problem(&fresh.verify_report().unwrap());
    assert!(p.starts_with("line 1 (seq 1)"), "{p}");
}
