//! The process-wide redactor in a worker serving a fleet: it knows every portal's current
//! and previous OAuth pair (4 tokens a portal, 4,000 for 1,000 portals), and every log line
//! and every handler's stderr tail (up to 16 KiB) passes it. Redaction must stay cheap.

use std::time::Instant;

#[test]
fn redacting_with_a_fleets_tokens_stays_cheap() {
    let tokens: Vec<String> = (0..4000)
        .map(|_| {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        })
        .collect();
    b24_guard::redact::remember(tokens.clone());
    let line = "INFO b24_events::worker: job done portal=p-0042.bitrix24.com event=ONCRMLEADADD id=123456 key=b24-0193a2b4c5d6 elapsed_ms=12 attempts=1 handler exited 0".to_string();
    let tail = "handler: processed lead 123 OK; ".repeat(16 * 1024 / 32);
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(b24_guard::redact::text(&line), line);
    }
    let per_line = t.elapsed() / 10;
    let t = Instant::now();
    assert_eq!(b24_guard::redact::text(&tail), tail);
    let per_tail = t.elapsed();
    let leak = format!("stderr: refused with {} today", tokens[1234]);
    assert!(!b24_guard::redact::text(&leak).contains(&tokens[1234]));
    eprintln!("4000 known tokens: {per_line:?} a log line, {per_tail:?} a 16 KiB tail");
    assert!(per_line.as_millis() < 20, "{per_line:?} a log line");
    assert!(per_tail.as_millis() < 500, "{per_tail:?} a 16 KiB tail");
}
