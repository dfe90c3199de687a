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
