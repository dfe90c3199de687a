//! Output meant for a person at a terminal (`-o table`) must not carry terminal control
//! sequences from data anyone outside can write: a lead's title comes from a public web form,
//! a dead letter's error from a handler. An escape sequence printed raw can rewrite the
//! screen (hide rows), set the clipboard (OSC 52) or plant a disguised link (OSC 8).

use crate::support::*;

/// Bytes no table cell may contain: ESC, BEL, CR, the other C0 controls but newline, DEL
/// and the C1 controls (U+0080..U+009F, e.g. CSI U+009B).
fn controls(s: &str) -> Vec<char> {
    s.chars().filter(|&c| c.is_control() && c != '\n').collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn table_output_does_not_pass_escape_sequences_from_portal_data() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::webhook(&sb);
    let title = "Bob\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\u{1b}[1A\r\u{9b}31mhidden\u{7f}";
    let params = serde_json::json!({"fields": {"TITLE": title}}).to_string();
    let o = env
        .run(&[
            "call",
            "crm.lead.add",
            "--params",
            &params,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env
        .run(&[
            "list",
            "crm.lead.list",
            "--params",
            r#"{"select":["ID","TITLE"]}"#,
            "-o",
            "table",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Bob"), "{out}");
    assert!(out.contains("hidden"), "the text is still shown: {out}");
    assert_eq!(controls(&out), Vec::<char>::new(), "{out:?}");
    // JSON output keeps the data exactly (escaped by JSON itself).
    let o = env
        .run(&[
            "list",
            "crm.lead.list",
            "--params",
            r#"{"select":["ID","TITLE"]}"#,
        ])
        .await;
    assert!(stdout(&o).contains(r"\u001b]52;c;"), "{}", stdout(&o));
}

/// The portal's error description often repeats the value it refused (`E-mail address "…" is
/// invalid.`), and that value can come from outside (an imported list). The message b24
/// prints on stderr must not carry its control sequences to the terminal.
#[tokio::test(flavor = "multi_thread")]
async fn error_messages_do_not_pass_escape_sequences_from_the_portal() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::webhook(&sb);
    let email = "x\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2Jy";
    let params =
        serde_json::json!({"fields": {"NAME": "n", "EMAIL": [{"VALUE": email}]}}).to_string();
    let o = env
        .run(&[
            "call",
            "crm.contact.add",
            "--params",
            &params,
            "--confirm-write",
        ])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("is invalid"), "{err}");
    assert_eq!(controls(&err), Vec::<char>::new(), "{err:?}");
}

/// A stderr that cannot be written (a full disk, here `/dev/full`) does not change the exit
/// code: the notes b24 writes there are lost, the command's own result is not. Before, every
/// note went through `eprintln!`, which panics on a failed write, so a finished command
/// exited 8 (internal) — for `b24 batch`, a partial or unknown outcome hidden behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_that_cannot_be_written_keeps_the_exit_code() {
    let sb = sandbox(SandboxConfig::default()).await;
    let env = Env::webhook(&sb);
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // not a Linux-like system: nothing to test here
    };
    let mut c = env.cmd(&[
        "call",
        "crm.lead.add",
        "--params",
        // An `auth` key among the params makes b24 write a note to stderr.
        r#"{"fields":{"TITLE":"x"},"auth":"zzz"}"#,
        "--confirm-write",
        "--dry-run",
    ]);
    c.stdout(std::process::Stdio::null()).stderr(full);
    let status = tokio::task::spawn_blocking(move || c.status().expect("b24 runs"))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(calls_of(&sb, "crm.lead.add"), 0, "a dry run sends nothing");
}
