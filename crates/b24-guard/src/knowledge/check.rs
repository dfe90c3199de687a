//! Strict parameter checking: refuse a parameter the method does not accept, before anything
//! is sent (`--strict-params`, the policy key `strict_params`, on by default in MCP).
//!
//! A misspelt or invented parameter is not harmless: the portal ignores most unknown names, so
//! `crm.deal.update {"id": 5, "feilds": {…}}` "succeeds" and changes nothing, and an agent
//! that invents `filter`-like keys on a method without them reads far more than it meant to.
//!
//! False refusals are worse than none, so only what the documentation lists completely is
//! enforced:
//! - top-level names only when the page's parameter table has no open rows (or the page says
//!   the method takes none) — see [`DocStatus::enforceable`](super::DocStatus::enforceable);
//! - names compare case-insensitively: the portal reads many v2 names in any case (`ID` for
//!   `id`, `FIELDS` for `fields`);
//! - `start` (paging) is always accepted; positional keys (`0`, `1`, …) are accepted up to the
//!   number of documented parameters;
//! - keys inside an object parameter only when its nested list is complete and not open: the
//!   `fields` of an entity with user fields (`UF_*`) are never refused here — the portal's live
//!   field list is the only authority for those (`b24 describe` shows it);
//! - only the keys of `fields` and `params` are checked one level down (`filter`, `order`,
//!   `select` and other objects may be keyed by data); user and relationship fields (`UF_*`,
//!   `ufCrm*`, `PARENT_ID_*`) are never refused there, whatever the page lists;
//! - a method served by both REST v2 and REST 3.0 (`tasks.task.*`) is not checked: the names
//!   differ between the two and the page documents one.
//!
//! A key in PHP bracket form (`fields[TITLE]`, as in a batch command's query string) is
//! checked as the path it stands for.

use serde_json::Value;

use super::{Knowledge, MethodDoc, Param};

/// A parameter the method does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method} does not take the parameter `{parameter}` (documented: {})", if .known.is_empty() { "none".to_string() } else { .known.join(", ") })]
pub struct Unaccepted {
    pub method: String,
    /// The parameter as given (`feilds`, or `fields.EVIL` for a nested key).
    pub parameter: String,
    /// The names the documentation lists at that level.
    pub known: Vec<String>,
}

/// Object parameters whose keys are checked: `fields` and `params`, the two every write takes
/// and agents misspell inside. Other objects (`filter`, `order`, `values` of a template,
/// `extras`, …) may be keyed by data, not by names, and are left alone.
fn nested_checked(p: &Param) -> bool {
    p.name.eq_ignore_ascii_case("fields") || p.name.eq_ignore_ascii_case("params")
}

/// Keys the portal's own configuration defines: user fields (`UF_CRM_…`, `ufCrm…`) and
/// relationship fields (`PARENT_ID_153`, `parentId153`). Never refused statically.
fn portal_defined(key: &str) -> bool {
    let l = key.to_ascii_lowercase();
    super::live::is_custom(key) || l.starts_with("parent_id_") || l.starts_with("parentid")
}

/// `fields[TITLE][0]` → `["fields", "TITLE", "0"]`; a plain name is one segment.
fn segments(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    if !key[open..].contains(']') {
        // PHP reads `fields[TITLE` as the top-level name `fields_TITLE`: the whole key is one
        // (unknown) name, never a way into `fields`.
        return vec![key];
    }
    let mut out = vec![&key[..open]];
    for part in key[open..].split('[').skip(1) {
        out.push(part.strip_suffix(']').unwrap_or(part));
    }
    out
}

/// A key PHP reads as an integer index: canonical decimal only. `02`, `+1` or `1 ` stay
/// string keys there — names the method does not take, not positions.
fn positional(key: &str) -> Option<usize> {
    let i = key.parse::<usize>().ok()?;
    (i.to_string() == key).then_some(i)
}

fn names(ps: &[Param]) -> Vec<String> {
    ps.iter().map(|p| p.name.clone()).collect()
}

/// Check `params` against the method's documented parameters. Methods without a complete
/// documented list, and params that are not an object, always pass.
pub fn check_params(method: &str, params: &Value) -> Result<(), Unaccepted> {
    // A method served by both REST v2 and REST 3.0 takes different names on each (`taskId` on
    // v2, `id` on v3), and its page documents one of them: the check cannot know which API the
    // call goes to, so it does not guess.
    if crate::catalog::Catalog::builtin()
        .get(method)
        .is_some_and(|m| m.api.contains("v2") && m.api.contains("v3"))
    {
        return Ok(());
    }
    match Knowledge::builtin().get(method) {
        Some(doc) => check_against(&doc, params),
        None => Ok(()),
    }
}

/// [`check_params`] against a given entry.
pub fn check_against(doc: &MethodDoc, params: &Value) -> Result<(), Unaccepted> {
    if !doc.status.enforceable() {
        return Ok(());
    }
    let Some(obj) = params.as_object() else {
        return Ok(());
    };
    let unaccepted = |parameter: String, known: Vec<String>| Unaccepted {
        method: doc.method.clone(),
        parameter,
        known,
    };
    for (key, value) in obj {
        let segs = segments(key);
        let top = segs[0];
        if top.eq_ignore_ascii_case("start") {
            continue;
        }
        if positional(top).is_some_and(|i| i < doc.params.len()) {
            continue; // positional form
        }
        let Some(p) = doc.param(top) else {
            return Err(unaccepted(key.clone(), names(&doc.params)));
        };
        if p.fields.is_empty() || p.open || !nested_checked(p) {
            continue;
        }
        // One level down: the keys of an object parameter with a complete nested list.
        let nested: Vec<String> = if segs.len() > 1 {
            vec![segs[1].to_string()]
        } else if let Value::Object(o) = value {
            o.keys().cloned().collect()
        } else {
            Vec::new()
        };
        for k in nested {
            let base = segments(&k)[0].to_string();
            if base.is_empty() || positional(&base).is_some() || portal_defined(&base) {
                continue; // list items, or fields this portal defines
            }
            if !p.fields.iter().any(|f| f.name.eq_ignore_ascii_case(&base)) {
                return Err(unaccepted(format!("{}.{base}", p.name), names(&p.fields)));
            }
        }
    }
    Ok(())
}
