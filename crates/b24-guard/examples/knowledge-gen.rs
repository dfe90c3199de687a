//! Regenerate `data/knowledge.jsonl` from a checkout of the official documentation
//! repository: `cargo run -p b24-guard --example knowledge-gen -- /path/to/b24restdocs [OUT]`.
//! See `b24_guard::knowledge::generate`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!(
            "usage: knowledge-gen <b24restdocs checkout> [output, default crates/b24-guard/data/knowledge.jsonl]"
        );
        return ExitCode::from(2);
    };
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/knowledge.jsonl"));
    if !root.join("api-reference").is_dir() {
        eprintln!(
            "{}: not a b24restdocs checkout (no api-reference/)",
            root.display()
        );
        return ExitCode::from(2);
    }
    let commit = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .or_else(|| std::env::var("B24RESTDOCS_COMMIT").ok());
    let catalog = b24_guard::Catalog::builtin();
    let (text, stats) = b24_guard::knowledge::generate::generate(&root, catalog, commit.as_deref());
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "{}: {}",
        out.display(),
        serde_json::to_string(&stats).unwrap_or_default()
    );
    ExitCode::SUCCESS
}
