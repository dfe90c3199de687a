//! What a newcomer reads: every `--help` has an example, global flags are described once,
//! man pages and completions exist, and a reader that goes away never makes b24 panic.
//!
//! A module of `tests/it/newcomer.rs`, so it uses its helpers.

use super::*;

/// Every command and subcommand's `--help` ends with at least one example.
#[test]
fn every_help_has_an_example() {
    fn subcommands(help: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_cmds = false;
        for line in help.lines() {
            if line.trim_end() == "Commands:" {
                in_cmds = true;
                continue;
            }
            if in_cmds {
                if line.trim().is_empty() || !line.starts_with("  ") {
                    break;
                }
                if line.starts_with("   ") {
                    continue; // a wrapped description, not a command name
                }
                if let Some(name) = line.split_whitespace().next()
                    && name != "help"
                {
                    out.push(name.to_string());
                }
            }
        }
        out
    }
    let env = Env::bare();
    let mut stack: Vec<Vec<String>> = vec![vec![]];
    let mut checked = 0;
    while let Some(path) = stack.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = env.cmd(&args).output().unwrap();
        assert_eq!(code(&o), 0, "b24 {}: {}", path.join(" "), stderr(&o));
        let help = stdout(&o);
        let subs = subcommands(&help);
        if !path.is_empty() {
            assert!(
                help.contains("Example"),
                "`b24 {} --help` has no example",
                path.join(" ")
            );
            checked += 1;
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            stack.push(p);
        }
    }
    assert!(checked > 30, "only {checked} commands found");
}

#[test]
fn a_reader_that_goes_away_never_makes_b24_panic() {
    let env = Env::bare();
    for args in [
        vec!["methods"],
        vec!["methods", "-o", "csv"],
        vec!["methods", "-o", "table"],
        vec!["methods", "-o", "json", "--pretty"],
        vec!["describe", "crm.lead.list"],
        vec!["completions", "bash"],
        vec!["audit", "path"],
    ] {
        let mut child = env
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before b24 writes: every write after this gets EPIPE.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "b24 {}: {err}", args.join(" "));
        assert_eq!(o.status.code(), Some(0), "b24 {}: {err}", args.join(" "));
    }
}

/// Global flags are described once (`b24 --help`), not repeated under every subcommand; they
/// still work after a subcommand. Every command has a man page with an ENVIRONMENT section, and
/// the completion scripts offer method names from the catalog.
#[test]
fn global_flags_once_man_pages_for_every_command_method_completions() {
    let env = Env::bare();
    let top = stdout(&env.cmd(&["--help"]).output().unwrap());
    for flag in [
        "--read-only",
        "--allow",
        "--state-dir",
        "--max-writes-per-hour",
    ] {
        assert!(top.contains(flag), "b24 --help lacks {flag}");
    }
    for sub in [
        vec!["completions"],
        vec!["sandbox"],
        vec!["call"],
        vec!["export"],
        vec!["audit", "verify"],
        vec!["plan", "list"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let o = env.cmd(&args).output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let h = stdout(&o);
        for flag in [
            "Refuse everything but reads",
            "--max-writes-per-hour <N>",
            "--env-file <FILE>",
        ] {
            assert!(
                !h.contains(flag),
                "b24 {} --help repeats {flag}",
                sub.join(" ")
            );
        }
        assert!(h.contains("b24 --help"), "points to the global options");
    }
    // Still accepted after the subcommand: refused by --read-only before anything else.
    let o = env
        .cmd(&[
            "call",
            "crm.lead.delete",
            "-p",
            r#"{"id":1}"#,
            "--confirm-destructive",
            "--read-only",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));

    let dir = env.dir.path().join("man");
    let o = env
        .cmd(&["completions", "man", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let pages: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() >= 40, "{} pages", pages.len());
    for p in &pages {
        let t = std::fs::read_to_string(p).unwrap();
        assert!(t.contains(".SH ENVIRONMENT"), "{}", p.display());
        assert!(t.contains("B24_WEBHOOK_URL"), "{}", p.display());
    }
    let export = std::fs::read_to_string(dir.join("b24-export.1")).unwrap();
    assert!(export.contains(".TH b24-export"), "{export}");
    assert!(export.contains("checkpoint") && export.contains("GLOBAL OPTIONS"));
    let verify = env
        .cmd(&["completions", "man", "audit", "verify"])
        .output()
        .unwrap();
    assert!(stdout(&verify).contains(".TH b24-audit-verify"));
    assert_eq!(
        code(&env.cmd(&["completions", "man", "nosuch"]).output().unwrap()),
        2
    );

    for shell in ["bash", "zsh", "fish"] {
        let o = env.cmd(&["completions", shell]).output().unwrap();
        let s = stdout(&o);
        assert!(
            s.contains("crm.deal.add") && s.contains("tasks.task.list"),
            "{shell}: method names from the catalog"
        );
    }
    // Completion candidates do not restrict what is accepted.
    let o = env.cmd(&["describe", "not.in.catalog"]).output().unwrap();
    assert!(!stderr(&o).contains("invalid value"), "{}", stderr(&o));
}
