//! Code comments cite the protocol notes by section (`docs/protocol.md` and a section sign with
//! a number such as 8.3). The notes were once outside the repository and the citations pointed
//! nowhere; this test reads every `.rs` file of the workspace and fails on a citation whose
//! section heading is missing from `docs/protocol.md`, so a renumbering or a removed section
//! cannot leave a comment dangling.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The section sign, written as an escape so this file cites nothing itself.
const SECTION: char = '\u{a7}';

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The section numbers that have a heading (`## 8. …`, `### 8.3 …`) in the notes.
fn headings(notes: &str) -> BTreeSet<String> {
    notes
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|n| n.trim_end_matches('.'))
        .filter(|n| is_section_number(n))
        .map(str::to_owned)
        .collect()
}

fn is_section_number(n: &str) -> bool {
    !n.is_empty()
        && n.split('.').count() <= 3
        && n.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Every cited number in `text`: the section sign, then digits with at most two dotted parts
/// (`8`, `8.3`, `8.3.1`); a trailing period ends the sentence, not the number.
fn citations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(SECTION) {
        let rest = &text[i + SECTION.len_utf8()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n = rest[..end].trim_end_matches('.');
        out.push(n.to_owned());
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_section_cited_in_code_exists_in_the_protocol_notes() {
    let root = workspace_root();
    let notes = std::fs::read_to_string(root.join("docs/protocol.md"))
        .expect("docs/protocol.md is in the repository");
    let known = headings(&notes);
    // The notes' own numbering must be readable, or every citation would "dangle".
    for n in ["1.3", "3", "5.2", "7.3", "8.3", "9.7", "11"] {
        assert!(
            known.contains(n),
            "heading {n} not parsed from docs/protocol.md: {known:?}"
        );
    }

    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    let mut cited = 0;
    let mut dangling = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (line_no, line) in text.lines().enumerate() {
            for n in citations(line) {
                cited += 1;
                if !known.contains(&n) {
                    let rel = file.strip_prefix(&root).unwrap_or(file);
                    dangling.push(format!("{}:{}: {SECTION}{n}", rel.display(), line_no + 1));
                }
            }
        }
    }
    // The code cites the notes in a few dozen places; finding none means the scan is broken.
    assert!(
        cited >= 20,
        "only {cited} citations found in {} files",
        files.len()
    );
    assert!(
        dangling.is_empty(),
        "citations with no section in docs/protocol.md:\n{}",
        dangling.join("\n")
    );
}

#[test]
fn the_scanner_reads_numbers_as_they_are_written() {
    let s = SECTION;
    let text = format!("see {s}8.3, {s}6. and ({s}9.7) or {s}5; {s}x");
    assert_eq!(citations(&text), ["8.3", "6", "9.7", "5", ""]);
    let notes = "# Title\n## 7. Limits\n### 7.2 Request rate\n## Notes\n#### 7.9 deep\n";
    assert_eq!(
        headings(notes).into_iter().collect::<Vec<_>>(),
        ["7", "7.2"]
    );
}
