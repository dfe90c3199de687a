//! Audit append cost per call. Ignored by default (timing, not behaviour):
//! `cargo test -p b24-guard --release --test it bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use b24_guard::audit::AuditLog;
use serde_json::json;

use crate::fields;

fn percentiles(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() * 99 / 100])
}

#[test]
#[ignore = "timing; run by hand"]
fn bench_audit_append_p50_p99() {
    for prefill in [0usize, 2_000] {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path().join("audit.jsonl"), d.path());
        for i in 0..prefill {
            log.append_record(fields("crm.lead.get", json!({"i": i})))
                .unwrap();
        }
        let mut times = Vec::new();
        for i in 0..1000 {
            let f = fields(
                "crm.lead.add",
                json!({"risk": "write", "params": {"keys": ["fields", "fields.TITLE"], "digest": "x"}, "i": i}),
            );
            let t = Instant::now();
            log.append_record(f).unwrap();
            times.push(t.elapsed());
        }
        let (p50, p99) = percentiles(times);
        println!("audit append, log of {prefill} records: p50 {p50:?}, p99 {p99:?}");
        assert!(log.verify_report().unwrap().is_ok());
    }
}
