//! How `data/catalog.tsv` is produced. It is generated, never edited by hand:
//!
//! 1. `methods.tsv` (the official method list, kept in the shared reference beside the repo:
//!    name, scope, deprecated, who may call, api, doc path; one row per documentation page);
//! 2. `data/corrections.tsv` fixes rows of that list whose name is wrong (the page title has a
//!    typo, e.g. `ctrigger.delete` for `crm.automation.trigger.delete`) or that are no method at
//!    all (`im.v2`, a change-log page);
//! 3. `data/extra.tsv` adds documented methods the list does not carry (same columns);
//! 4. the verb rules ([`classify`]) give each method a risk, and `data/overrides.tsv` replaces it
//!    for the reviewed exceptions, each with its reason.
//!
//! Regenerate with `B24_REGEN_CATALOG=1 cargo test -p b24-guard --lib catalog_is_up_to_date`;
//! without the variable that test fails when the checked-in file is stale.

use std::collections::{HashMap, HashSet};

use super::Risk;
use super::rules::{classify, idempotent, lists, pack_of};

pub(crate) const HEADER: &str = "name\tscope\trisk\tapi\tlists\tidempotent\tpack\tdeprecated\twho_can_call\tdoc_path\trisk_source";

/// The inputs of [`generate_from`], each the text of one TSV file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// The official list, with its header row.
    pub methods: &'a str,
    /// Extra documented methods, same columns; `#` comments and one header row.
    pub additions: &'a str,
    /// `listed name \t real name or - \t reason`; `-` drops the row.
    pub corrections: &'a str,
    /// `name \t risk \t reason`.
    pub overrides: &'a str,
}

/// Rows of a tab-separated data file: blank lines and `#` comments skipped.
pub(crate) fn data_rows(tsv: &str) -> impl Iterator<Item = Vec<&str>> {
    tsv.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::trim).collect())
}

/// Reviewed overrides: lowercased name → (risk, reason). Rows without a valid risk or a reason
/// are skipped here and rejected by the unit tests.
pub(crate) fn parse_overrides(tsv: &str) -> HashMap<String, (Risk, String)> {
    let mut out = HashMap::new();
    for cols in data_rows(tsv) {
        if cols.len() >= 3
            && !cols[2].is_empty()
            && let Some(r) = Risk::parse(cols[1])
        {
            out.insert(cols[0].to_ascii_lowercase(), (r, cols[2].to_string()));
        }
    }
    out
}

/// Corrections: lowercased listed name → real name (`None`: not a method, drop it).
pub(crate) fn parse_corrections(tsv: &str) -> HashMap<String, Option<String>> {
    let mut out = HashMap::new();
    for cols in data_rows(tsv) {
        if cols.len() >= 3 && !cols[0].is_empty() && !cols[1].is_empty() {
            let to = (cols[1] != "-").then(|| cols[1].to_string());
            out.insert(cols[0].to_ascii_lowercase(), to);
        }
    }
    out
}

/// Build the catalog TSV from the official list and the overrides.
pub fn generate(methods_tsv: &str, overrides_tsv: &str) -> String {
    generate_from(Sources {
        methods: methods_tsv,
        overrides: overrides_tsv,
        ..Sources::default()
    })
}

/// Build the catalog TSV from every source (see the module documentation for the order).
pub fn generate_from(src: Sources<'_>) -> String {
    let overrides = parse_overrides(src.overrides);
    let corrections = parse_corrections(src.corrections);
    let listed = src.methods.lines().skip(1);
    let added = src
        .additions
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1);
    let mut rows: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for line in listed.chain(added) {
        let c: Vec<&str> = line.split('\t').collect();
        if c.len() < 6 || c[0].trim().is_empty() {
            continue;
        }
        let listed_name = c[0].trim();
        let name = match corrections.get(&listed_name.to_ascii_lowercase()) {
            Some(None) => continue,
            Some(Some(real)) => real.as_str(),
            None => listed_name,
        };
        if !seen.insert(name.to_ascii_lowercase()) {
            continue;
        }
        let who = c[3].trim().replace(['\t', '\n'], " ");
        let (risk, source) = match overrides.get(&name.to_ascii_lowercase()) {
            Some((r, _)) => (*r, "override"),
            None => (classify(name, &who), "rule"),
        };
        let deprecated = c[2].trim().eq_ignore_ascii_case("deprecated");
        let api = if name.starts_with("tasks.task.") && !name.contains("commentitem") {
            "v2,v3"
        } else {
            c[4].trim()
        };
        rows.push(format!(
            "{name}\t{}\t{}\t{api}\t{}\t{}\t{}\t{}\t{}\t{}\t{source}",
            c[1].trim(),
            risk.as_str(),
            lists(name, risk),
            idempotent(name, risk),
            pack_of(name),
            deprecated,
            who.chars().take(120).collect::<String>(),
            c[5].trim()
        ));
    }
    rows.sort();
    let mut out = String::from(HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out
}
