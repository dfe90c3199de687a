//! Hostile round: credential fields in the spellings a log line carries them in (JSON, a
//! debug-printed struct, Bitrix24's percent-encoded event form) are redacted even when the
//! redactor was never told the value — an event's `application_token`, a token the portal
//! rotated after start-up.

use b24_guard::redact::redact_text;

#[test]
fn unknown_credentials_in_json_debug_and_encoded_forms_are_redacted() {
    let cases = [
        r#"{"auth":{"access_token":"tokAAAA1111","application_token":"appBBBB2222"}}"#,
        r#"{"refresh_token" : "tokAAAA1111", "client_secret":"appBBBB2222"}"#,
        // JSON inside a quoted string (a handler's stderr as a debug-printed field).
        r#"why="{\"access_token\":\"tokAAAA1111\",\"application_token\":\"appBBBB2222\"}""#,
        r#"TokenPair { access_token: "tokAAAA1111", refresh_token: "appBBBB2222" }"#,
        "event=ONCRMLEADADD&auth%5Baccess_token%5D=tokAAAA1111&auth%5Bapplication_token%5D=appBBBB2222",
        "auth[access_token]=tokAAAA1111 auth[application_token]=appBBBB2222",
        "ACCESS_TOKEN: tokAAAA1111; Application_Token=appBBBB2222",
        "access_token%3Dtok%41AAA1111&client_secret%3AappBBBB2222",
    ];
    for line in cases {
        let r = redact_text(line, &[]);
        assert!(
            !r.contains("AAA1111") && !r.contains("BBBB2222"),
            "{line}\n -> {r}"
        );
        assert!(r.contains("[redacted]"), "{r}");
    }
    // Names that merely end like a credential field, and prose, are left alone.
    for line in ["my_access_token_count: 3", "tokens refused: 2"] {
        let r = redact_text(line, &[]);
        assert!(!r.contains("[redacted]"), "{r}");
    }
    assert_eq!(
        redact_text("my_access_token_count: 3", &[]),
        "my_access_token_count: 3"
    );
}

/// A known secret cut at its start (a handler's stderr is kept as its last 16 KiB, cut at any
/// byte) leaves its tail as a word of its own: redacted like a copy cut at its end.
#[test]
fn a_known_secret_cut_at_its_start_is_redacted() {
    let secret = "Sk3yPrefix0123456789abcdefXYZ".to_string();
    for line in [
        "handler exited with exit status: 3: 0123456789abcdefXYZ\n....",
        "x 456789ABCDEFxyz, y",
        "cdefXYZ9 is another word",
    ] {
        let r = redact_text(line, std::slice::from_ref(&secret));
        assert!(
            !r.to_ascii_lowercase().contains("cdefxyz") || line.starts_with("cdefXYZ9"),
            "{line}\n -> {r}"
        );
    }
    // Short tails (under 8 characters) and words that only end like the secret stay.
    assert_eq!(
        redact_text("ends defXYZ", std::slice::from_ref(&secret)),
        "ends defXYZ"
    );
    assert_eq!(
        redact_text("word abcdefXYZ", std::slice::from_ref(&secret)),
        "word [redacted]"
    );
}

/// The redactor stays linear on a long run of token characters (a handler's 16 KiB of stderr
/// without a space), whatever secrets it knows.
#[test]
fn redacting_a_long_word_stays_fast() {
    let secrets: Vec<String> = (0..8)
        .map(|k| format!("{k}secretsecretsecret{k}"))
        .collect();
    let line = "a".repeat(64 * 1024);
    let t0 = std::time::Instant::now();
    let r = redact_text(&line, &secrets);
    assert_eq!(r, line);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
}

/// Where the kernel lets anyone hard-link to others' files (`fs.protected_hardlinks = 0`),
/// another account can put, in a sticky world-writable directory, a hard link to a wide policy
/// of this account at the path a client's policy is read from: owned by this account and
/// read-only, it passed every check. A policy file there with more than one name is refused;
/// the same file in a directory only this account writes is read.
#[cfg(unix)]
#[test]
fn a_hard_linked_policy_in_a_directory_others_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let t = tempfile::tempdir().unwrap();
    mode(t.path(), 0o755);
    let sticky = t.path().join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    mode(&sticky, 0o1777);
    let own = t.path().join("etc");
    std::fs::create_dir(&own).unwrap();
    mode(&own, 0o755);
    let wide = own.join("wide.toml");
    std::fs::write(&wide, "allow = [\"*\"]\n").unwrap();
    mode(&wide, 0o644);
    let planted = sticky.join("client.toml");
    std::fs::hard_link(&wide, &planted).unwrap();
    let client = |p: &std::path::Path| b24_guard::clients::McpClient {
        name: "linked".into(),
        policy: p.to_path_buf(),
    };
    let e = client(&planted).layer().unwrap_err().to_string();
    assert!(e.contains("hard links"), "{e}");
    // In this account's own directory, a second name is harmless.
    assert!(client(&wide).layer().is_ok());
    // Alone again (one name), the file in the sticky directory is this account's own.
    std::fs::remove_file(&wide).unwrap();
    assert!(client(&planted).layer().is_ok());
}
