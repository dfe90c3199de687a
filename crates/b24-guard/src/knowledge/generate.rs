//! How `data/knowledge.jsonl` is produced. It is generated, never edited by hand:
//!
//! ```sh
//! git clone https://github.com/bitrix24/b24restdocs /tmp/b24restdocs
//! cargo run -p b24-guard --example knowledge-gen -- /tmp/b24restdocs
//! ```
//!
//! For every method of the catalog (`data/catalog.tsv`) it reads the method's page (the
//! catalog's `doc_path`) and keeps the facts: parameter names, types, required marks, allowed
//! values, defaults, nested fields, the returned-data names and types, one request example and
//! one result example (shortened). A method whose page is missing, or says nothing about its
//! parameters, gets an entry marked `undocumented`, so every catalog method has a line.
//!
//! The first line records the source (repository and commit, when given); each further line is
//! one [`MethodDoc`], sorted by lowercased name, compact JSON starting with `{"m":"` so the
//! lookup can index the file without parsing it.

use std::path::Path;

use super::markdown::parse_page;
use super::{DocStatus, MethodDoc};
use crate::catalog::Catalog;

/// Counts of a generation run, for the generator's report and the README.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Stats {
    pub methods: usize,
    pub complete: usize,
    pub open: usize,
    pub no_params: usize,
    pub undocumented: usize,
    pub missing_pages: usize,
    pub with_example: usize,
    pub with_result: usize,
    pub bytes: usize,
}

/// The page of a catalog method, or `None` when it is not in the checkout. Paths that leave
/// the checkout (`..`, absolute) are refused.
fn read_page(root: &Path, doc_path: &str) -> Option<String> {
    if doc_path.is_empty()
        || doc_path.starts_with('/')
        || doc_path.split('/').any(|s| s == ".." || s.is_empty())
    {
        return None;
    }
    std::fs::read_to_string(root.join(doc_path)).ok()
}

/// Build the knowledge file from a `b24restdocs` checkout at `root` for every method of
/// `catalog`. `commit` (the checkout's commit) is recorded in the first line.
pub fn generate(root: &Path, catalog: &Catalog, commit: Option<&str>) -> (String, Stats) {
    let mut stats = Stats::default();
    let mut docs: Vec<MethodDoc> = Vec::new();
    for m in catalog.search(None, None, None) {
        let doc = match read_page(root, &m.doc_path) {
            Some(page) => parse_page(&m.name, &page),
            None => {
                stats.missing_pages += 1;
                MethodDoc {
                    method: m.name.clone(),
                    status: DocStatus::Undocumented,
                    params: Vec::new(),
                    result: Vec::new(),
                    example: None,
                    result_example: None,
                }
            }
        };
        docs.push(doc);
    }
    docs.sort_by_key(|d| d.method.to_ascii_lowercase());
    let mut out = serde_json::json!({
        "format": "b24-knowledge/1",
        "source": "https://github.com/bitrix24/b24restdocs",
        "commit": commit,
        "methods": docs.len(),
    })
    .to_string();
    out.push('\n');
    for d in &docs {
        stats.methods += 1;
        match d.status {
            DocStatus::Complete => stats.complete += 1,
            DocStatus::Open => stats.open += 1,
            DocStatus::None => stats.no_params += 1,
            DocStatus::Undocumented => stats.undocumented += 1,
        }
        stats.with_example += usize::from(d.example.is_some());
        stats.with_result += usize::from(!d.result.is_empty() || d.result_example.is_some());
        // serde_json keeps field order (preserve_order): the line starts with `{"m":"`.
        out.push_str(&serde_json::to_string(d).unwrap_or_default());
        out.push('\n');
    }
    stats.bytes = out.len();
    (out, stats)
}
