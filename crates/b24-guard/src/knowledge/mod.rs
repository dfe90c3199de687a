//! Method knowledge: what each documented method takes and returns — parameter names, types,
//! required flags, allowed values, the nested fields of `fields`-like objects, the result's
//! shape and one example — as facts extracted from the official documentation repository
//! (`bitrix24/b24restdocs`), never its prose.
//!
//! The data is `data/knowledge.jsonl`, one compact JSON object per method, sorted by name and
//! produced by [`generate::generate`] (see `data/README.md` for the command). It is compiled
//! into the binary but not parsed at start-up: the first lookup indexes the line of each method
//! (names only), and only the line asked for is parsed. A `b24 call` that does not check
//! parameters never touches it.
//!
//! What the knowledge is used for:
//! - `b24 describe` and MCP `b24_describe` show it ([`MethodDoc`]), merged with the portal's live
//!   field list when there is one ([`live`]);
//! - the gate refuses parameters a method does not accept before anything is sent, when strict
//!   parameter checking is on ([`check`]). Only a *complete* documented list is enforced.

use std::collections::HashMap;
use std::sync::OnceLock;

pub mod check;
pub mod generate;
pub mod live;
mod markdown;
mod yfm;

pub use check::{Unaccepted, check_params};
pub use live::{LiveField, LiveReport, MergedField, companion, fetch_live, merge_live};

/// How much the documentation says about a method's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocStatus {
    /// A parameter table with no open rows: the list is complete, so it is enforced.
    Complete,
    /// A parameter table with open rows (`UF_CRM_...`, positional arguments, a set that depends
    /// on something else): shown, never enforced.
    Open,
    /// The page says the method takes no parameters.
    None,
    /// No page, or a page without a parameter table or a statement that there are none.
    Undocumented,
}

impl DocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocStatus::Complete => "complete",
            DocStatus::Open => "open",
            DocStatus::None => "none",
            DocStatus::Undocumented => "undocumented",
        }
    }

    /// Whether the documented list can be enforced (every accepted parameter is listed).
    pub fn enforceable(self) -> bool {
        matches!(self, DocStatus::Complete | DocStatus::None)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One parameter (or one nested field of an object parameter).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    #[serde(rename = "n")]
    pub name: String,
    /// The documented type (`integer`, `string`, `object`, `crm_status`, `user[]`, …); empty
    /// when the page gives none.
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub ty: String,
    #[serde(rename = "q", default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// Allowed values, where the page lists them.
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The documented default, where the page gives one as a value.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The fields of an object parameter, where the page lists them.
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Param>,
    /// The nested list is open: it has pattern rows (`UF_CRM_...`, `PARENT_ID_...`) or the
    /// entity takes user fields, so keys missing from it are not refused.
    #[serde(rename = "o", default, skip_serializing_if = "is_false")]
    pub open: bool,
}

/// One field of the result, as the page's returned-data table names it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultField {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub ty: String,
}

/// Everything known about one method's parameters and result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MethodDoc {
    #[serde(rename = "m")]
    pub method: String,
    #[serde(rename = "s")]
    pub status: DocStatus,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub result: Vec<ResultField>,
    /// Example params (from the page's request example; long values shortened).
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
    /// Example `result` (from the page's response example; shortened).
    #[serde(rename = "rx", default, skip_serializing_if = "Option::is_none")]
    pub result_example: Option<serde_json::Value>,
}

impl MethodDoc {
    /// A top-level parameter by name, any case (the portal reads many names that way).
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The view `b24 describe` and `b24_describe` show (readable key names).
    pub fn view(&self) -> serde_json::Value {
        fn param_view(p: &Param) -> serde_json::Value {
            let mut v = serde_json::json!({"name": p.name, "type": p.ty, "required": p.required});
            if !p.values.is_empty() {
                v["values"] = serde_json::json!(p.values);
            }
            if let Some(d) = &p.default {
                v["default"] = serde_json::json!(d);
            }
            if !p.fields.is_empty() {
                v["fields"] = p.fields.iter().map(param_view).collect();
                v["fields_open"] = serde_json::json!(p.open);
            }
            v
        }
        serde_json::json!({
            "status": self.status,
            "enforced": self.status.enforceable(),
            "params": self.params.iter().map(param_view).collect::<Vec<_>>(),
            "result": self.result.iter().map(|r| serde_json::json!({"name": r.name, "type": r.ty})).collect::<Vec<_>>(),
            "example_params": self.example,
            "example_result": self.result_example,
        })
    }
}

/// The knowledge compiled into this binary.
pub struct Knowledge {
    text: &'static str,
    /// Lowercased method name → its line (built on first use, names only).
    index: OnceLock<HashMap<String, &'static str>>,
}

const DATA: &str = include_str!("../../data/knowledge.jsonl");

/// Every line of a method starts like this, so the index needs no JSON parsing.
const LINE_PREFIX: &str = "{\"m\":\"";

static BUILTIN: Knowledge = Knowledge {
    text: DATA,
    index: OnceLock::new(),
};

impl Knowledge {
    pub fn builtin() -> &'static Knowledge {
        &BUILTIN
    }

    fn index(&self) -> &HashMap<String, &'static str> {
        self.index.get_or_init(|| {
            let mut m = HashMap::new();
            for line in self.text.lines() {
                if let Some(rest) = line.strip_prefix(LINE_PREFIX)
                    && let Some(end) = rest.find('"')
                {
                    m.insert(rest[..end].to_ascii_lowercase(), line);
                }
            }
            m
        })
    }

    /// How many methods have an entry (documented or marked undocumented).
    pub fn len(&self) -> usize {
        self.index().len()
    }

    pub fn is_empty(&self) -> bool {
        self.index().is_empty()
    }

    /// The raw line of a method, if it has one.
    pub fn line(&self, method: &str) -> Option<&'static str> {
        self.index()
            .get(&method.trim().to_ascii_lowercase())
            .copied()
    }

    /// The entry of a method (any case). `None` when the method has no entry at all; a broken
    /// line is treated as no entry (and the unit tests parse every line).
    pub fn get(&self, method: &str) -> Option<MethodDoc> {
        serde_json::from_str(self.line(method)?).ok()
    }

    /// Whether `method` takes the top-level parameter `name` (any case): `Some` only where the
    /// documented list is complete, `None` when nobody can say. For front ends that add
    /// parameters of their own (keyset paging adds `filter` and `order`).
    pub fn takes(&self, method: &str, name: &str) -> Option<bool> {
        let d = self.get(method)?;
        d.status
            .enforceable()
            .then(|| name.eq_ignore_ascii_case("start") || d.param(name).is_some())
    }

    /// The source line of the data (which documentation commit it was built from).
    pub fn source(&self) -> Option<serde_json::Value> {
        let first = self.text.lines().next()?;
        if first.starts_with(LINE_PREFIX) {
            return None;
        }
        serde_json::from_str(first).ok()
    }
}

#[cfg(test)]
mod tests;
