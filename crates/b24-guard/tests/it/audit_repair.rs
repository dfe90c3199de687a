//! Damage that is not an attack — big records, multibyte text, a torn write, a garbage line —
//! must never switch auditing off: appending goes on and `verify` passes.

use std::io::Write;
use std::path::Path;

use b24_guard::audit::{AuditLog, ParamsMode};
use serde_json::json;

use crate::fields;

fn open(dir: &Path) -> AuditLog {
    AuditLog::open(dir.join("audit.jsonl"), dir)
}

fn append_raw(log: &AuditLog, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(log.path())
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn assert_ok(log: &AuditLog, records: u64) -> Vec<String> {
    let r = log.verify_report().unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.records, records, "{r:?}");
    r.notes
}

#[test]
fn a_200_kib_cyrillic_record_then_more_appends() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    log.append_record(fields("crm.lead.list", json!({})))
        .unwrap();
    let big = "Привет, мир! Заявка с сайта ".repeat(5000);
    assert!(big.len() > 200 * 1024);
    log.append_record(fields("crm.lead.add", json!({"title": big})))
        .unwrap();
    for i in 0..3 {
        log.append_record(fields("crm.lead.get", json!({"id": i})))
            .unwrap();
    }
    assert_ok(&log, 5);
    assert_eq!(log.tail(1).unwrap()[0]["seq"], 5);
}

#[test]
fn cyrillic_at_every_offset_near_the_old_64_kib_boundary() {
    for pad in 0..8 {
        let d = tempfile::tempdir().unwrap();
        let log = open(d.path());
        // A record whose line ends a few bytes either side of 64 KiB, so that any fixed
        // 64 KiB tail read would start inside a two-byte character for some pad.
        let text = format!("{}{}", "я".repeat(32 * 1024 - 40), "x".repeat(pad));
        log.append_record(fields("crm.lead.add", json!({"t": text})))
            .unwrap();
        log.append_record(fields("crm.lead.get", json!({"id": pad})))
            .unwrap();
        log.append_record(fields("crm.lead.get", json!({"id": pad})))
            .unwrap();
        assert_ok(&log, 3);
    }
}

#[test]
fn a_torn_last_line_is_sealed_and_auditing_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    for i in 0..3 {
        log.append_record(fields("crm.lead.get", json!({"id": i})))
            .unwrap();
    }
    // A crash (disk full) half-way through a record: no newline, cut inside a Cyrillic char.
    let half = "{\"v\":2,\"seq\":4,\"method\":\"crm.lead.add\",\"title\":\"Пр".as_bytes();
    append_raw(&log, &half[..half.len() - 1]);
    let notes = assert_ok(&log, 3);
    assert!(notes[0].contains("next append seals it"), "{notes:?}");
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 5, "repair marker 4, record 5");
    assert!(a.notes[0].contains("1 torn"), "{:?}", a.notes);
    let notes = assert_ok(&log, 5);
    assert!(notes.iter().any(|n| n.contains("sealed 1")), "{notes:?}");
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    assert_ok(&log, 6);
}

#[test]
fn a_garbage_line_is_sealed_and_auditing_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    append_raw(
        &log,
        b"\xff\xfe not json at all\n\n{\"v\":2,\"seq\":2,\"mac\":\"00\"}\n",
    );
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 3);
    assert!(a.notes[0].contains("sealed 3"), "{:?}", a.notes);
    assert_ok(&log, 3);
    // The sealed lines cannot be swapped for others afterwards.
    let text = std::fs::read(log.path()).unwrap();
    let swapped = String::from_utf8_lossy(&text).replace("not json at all", "not json at ALL");
    std::fs::write(log.path(), swapped).unwrap();
    let r = log.verify_report().unwrap();
    assert!(!r.is_ok());
}

#[test]
fn a_record_torn_just_before_its_newline_is_adopted() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    let head_after_1 = std::fs::read(log.head_path()).unwrap();
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    // Record 2 reached the disk without its newline, and the head update never happened.
    let text = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(log.path(), &text[..text.len() - 1]).unwrap();
    std::fs::write(log.head_path(), head_after_1).unwrap();
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 3);
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    assert_ok(&log, 3);
}

#[test]
fn an_interrupted_head_update_is_adopted() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    let head_after_1 = std::fs::read(log.head_path()).unwrap();
    log.append_record(fields("crm.lead.get", json!({})))
        .unwrap();
    // The process died between writing record 2 and updating the head.
    std::fs::write(log.head_path(), head_after_1).unwrap();
    let notes = assert_ok(&log, 2);
    assert!(notes[0].contains("interrupted"), "{notes:?}");
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 3);
    assert!(a.notes.is_empty(), "{:?}", a.notes);
    assert_ok(&log, 3);
}

#[test]
fn concurrent_appenders_keep_one_chain() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let log = open(&dir);
                for i in 0..15 {
                    log.append_record(fields("crm.lead.get", json!({"t": t, "i": i})))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_ok(&open(&dir), 60);
}

#[test]
fn a_legacy_unkeyed_log_is_carried_over() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    let mut prev = "0".repeat(64);
    let mut text = String::new();
    for i in 0..3 {
        let mut r = json!({"v": 1, "ts": "2026-01-01T00:00:00Z", "method": "crm.lead.get", "i": i, "prev_hash": prev});
        let c = b24_guard::store::canonical(&r);
        let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(c.as_bytes()));
        r["hash"] = json!(h);
        prev = h;
        text.push_str(&format!("{r}\n"));
    }
    std::fs::write(log.path(), &text).unwrap();
    let r = log.verify_report().unwrap();
    assert!(r.is_ok() && r.legacy_records == 3, "{r:?}");
    let a = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap();
    assert_eq!(a.seq, 2, "chain start marker, then the record");
    let r = log.verify_report().unwrap();
    assert!(
        r.is_ok() && r.legacy_records == 3 && r.records == 2,
        "{r:?}"
    );
    // An edit of a legacy record is still caught.
    let t = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(log.path(), t.replacen("\"i\":1", "\"i\":7", 1)).unwrap();
    assert!(!log.verify_report().unwrap().is_ok());
}

#[test]
fn an_unwritable_log_is_an_error_not_a_warning() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("audit.jsonl")).unwrap();
    let log = open(d.path());
    let e = log
        .append_record(fields("crm.lead.add", json!({})))
        .unwrap_err();
    assert!(e.to_string().contains("audit.jsonl"), "{e}");
    let dev_null = AuditLog::open("/dev/null", d.path());
    assert!(
        dev_null
            .append_record(fields("crm.lead.add", json!({})))
            .is_err(),
        "an audit log that is not a regular file is refused"
    );
}

#[test]
fn params_are_keys_and_a_keyed_digest_by_default() {
    let d = tempfile::tempdir().unwrap();
    let log = open(d.path());
    let params = json!({"fields": {"NAME": "Иван", "PHONE": [{"VALUE": "+79990001122"}]}, "auth": "tok-abcdef123"});
    let secrets = vec!["tok-abcdef123".to_string()];
    let e = log
        .params_entry(&params, ParamsMode::KeysAndDigests, &secrets)
        .unwrap();
    let text = e.to_string();
    assert!(!text.contains("Иван") && !text.contains("+7999") && !text.contains("tok-"));
    assert_eq!(
        e["keys"],
        json!(["fields", "fields.NAME", "fields.PHONE", "auth"])
    );
    assert!(e["digest"].as_str().unwrap().starts_with("hmac-sha256:"));
    let same = log
        .params_entry(&params, ParamsMode::KeysAndDigests, &secrets)
        .unwrap();
    assert_eq!(e["digest"], same["digest"]);
    let other = log
        .params_entry(
            &json!({"fields": {"NAME": "Пётр"}}),
            ParamsMode::KeysAndDigests,
            &secrets,
        )
        .unwrap();
    assert_ne!(e["digest"], other["digest"]);
    // Another key (another installation) gives another digest: short values cannot be
    // brute-forced from the log alone.
    let d2 = tempfile::tempdir().unwrap();
    let e2 = open(d2.path())
        .params_entry(&params, ParamsMode::KeysAndDigests, &secrets)
        .unwrap();
    assert_ne!(e["digest"], e2["digest"]);
    let full = log
        .params_entry(&params, ParamsMode::Full, &secrets)
        .unwrap();
    assert_eq!(full["fields"]["NAME"], "Иван");
    assert_eq!(full["auth"], "[redacted]");
    assert!(!full.to_string().contains("tok-abcdef123"));
}
