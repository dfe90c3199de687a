//! Method names, normalised once before any decision is made about them.
//!
//! The portal is lenient about how a method is spelled: it ignores case, strips a `.json` or
//! `.xml` transport suffix and tolerates surrounding blanks. A guard that compares the *spelled*
//! name with a deny glob can therefore be walked around (`CRM.Lead.Delete`, `crm.lead.delete.json`).
//! Every front end passes the caller's text through [`normalise`] and only the result is ever
//! classified, checked, recorded and sent. Anything outside a strict character set is refused
//! as malformed rather than guessed at: percent signs, slashes, `?`, control characters or
//! non-ASCII letters have no place in a method name and are exactly what a smuggling attempt
//! would use.

use std::fmt;

/// The longest method name accepted (the longest documented one is under 80 characters).
pub const MAX_METHOD_LEN: usize = 128;

/// A method name that passed [`normalise`]: lower-case ASCII letters, digits, `.` and `_`,
/// no transport suffix, no empty segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MethodName(String);

impl MethodName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `batch` method.
    pub fn batch() -> MethodName {
        MethodName("batch".to_string())
    }

    /// Whether this is the `batch` method itself.
    pub fn is_batch(&self) -> bool {
        self.0 == "batch"
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MethodName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a method name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed method name {shown}: {reason}")]
pub struct MalformedMethod {
    /// The name as given, quoted and shortened for display.
    pub shown: String,
    pub reason: &'static str,
}

fn malformed(raw: &str, reason: &'static str) -> MalformedMethod {
    let mut shown: String = raw.chars().take(60).collect();
    if raw.chars().count() > 60 {
        shown.push('…');
    }
    MalformedMethod {
        shown: format!("{shown:?}"),
        reason,
    }
}

/// Normalise a method name: trim blanks, lower-case, strip one `.json` / `.xml` suffix, and
/// check the strict character set.
pub fn normalise(raw: &str) -> Result<MethodName, MalformedMethod> {
    let t = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if t.is_empty() {
        return Err(malformed(raw, "it is empty"));
    }
    if t.len() > MAX_METHOD_LEN {
        return Err(malformed(raw, "it is too long"));
    }
    if let Some(bad) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_'))
    {
        return Err(malformed(
            raw,
            match bad {
                '%' => "it is percent-encoded (give the plain name)",
                '/' | '\\' => "it contains a path separator",
                '?' | '&' | '=' => "it contains a query string (pass parameters as params)",
                c if c.is_whitespace() => "it contains blanks",
                c if c.is_control() => "it contains control characters",
                c if !c.is_ascii() => "it contains non-ASCII characters",
                _ => "only letters, digits, `.` and `_` are allowed",
            },
        ));
    }
    let mut m = t.to_ascii_lowercase();
    for suffix in [".json", ".xml"] {
        if m.len() > suffix.len() && m.ends_with(suffix) {
            m.truncate(m.len() - suffix.len());
            break;
        }
    }
    if m.starts_with('.') || m.ends_with('.') || m.contains("..") {
        return Err(malformed(raw, "it has an empty segment"));
    }
    if m.ends_with(".json") || m.ends_with(".xml") {
        return Err(malformed(raw, "it has more than one transport suffix"));
    }
    Ok(MethodName(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_the_portal_accepts_become_one_name() {
        for s in [
            "crm.lead.delete",
            "CRM.LEAD.DELETE",
            "Crm.Lead.Delete",
            " crm.lead.delete\n",
            "crm.lead.delete.json",
            "crm.lead.delete.JSON",
            "crm.lead.delete.xml",
            "\tCRM.lead.DELETE.Xml ",
        ] {
            assert_eq!(normalise(s).unwrap().as_str(), "crm.lead.delete", "{s:?}");
        }
        assert!(normalise("BATCH.json").unwrap().is_batch());
        assert_eq!(
            normalise("imbot.v2.Chat.Message.read").unwrap().as_str(),
            "imbot.v2.chat.message.read"
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for s in [
            "",
            "   ",
            "crm.lead.delete%2Ejson",
            "crm%2Elead%2Edelete",
            "crm.lead.delete?id=1",
            "crm.lead.delete/",
            "../crm.lead.delete",
            "crm.lead.delete\0",
            "crm.lead.dеlete", // Cyrillic е
            "crm..lead.delete",
            ".crm.lead.delete",
            "crm.lead.delete.",
            "crm.lead.delete.json.json",
            "crm.lead.delete.xml.json",
            "crm lead delete",
            "crm.lead.delete\u{200b}",
            ".json",
        ] {
            assert!(normalise(s).is_err(), "{s:?} should be refused");
        }
        assert!(normalise(&"a".repeat(MAX_METHOD_LEN + 1)).is_err());
    }
}
