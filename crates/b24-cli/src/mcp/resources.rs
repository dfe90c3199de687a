//! The skill's references as MCP resources: the playbook, recipes, scenarios, setup notes and
//! one reference per capability pack, at `b24://skill/<name>` and `b24://skill/packs/<pack>`.
//!
//! Why embedded: an agent host that starts `b24 mcp` may have only the binary, not the skill's
//! folder; `include_str!` makes the binary carry the very text the skill ships, so a resource
//! can never disagree with the files of the same build. The MCP tests compare the list with the
//! reference folder, so a new file there that is not listed here fails them.

use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use serde_json::json;

/// The MIME type of every resource here.
pub const MARKDOWN: &str = "text/markdown";
/// The URI prefix of the skill's references.
pub const PREFIX: &str = "b24://skill/";

/// One embedded reference: its URI path after [`PREFIX`], what it is for, and its text.
struct Doc {
    path: &'static str,
    about: &'static str,
    text: &'static str,
}

macro_rules! doc {
    ($path:literal, $file:literal, $about:literal) => {
        Doc {
            path: $path,
            about: $about,
            text: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../skills/bitrix24-agent/references/",
                $file
            )),
        }
    };
}

const DOCS: &[Doc] = &[
    doc!(
        "playbook",
        "playbook.md",
        "How to work on a Bitrix24 portal safely: find the method, read before writing, plan then apply, page large lists, handle errors."
    ),
    doc!(
        "recipes",
        "recipes.md",
        "Worked chains of b24 commands for common tasks (CRM, tasks, exports, event handlers)."
    ),
    doc!(
        "scenarios",
        "scenarios.md",
        "What people ask for, in their words, and which pack and commands answer it."
    ),
    doc!(
        "setup",
        "setup.md",
        "Portal setup: webhooks and OAuth apps, network access, several portals."
    ),
    doc!(
        "mcp-setup",
        "mcp-setup.md",
        "Setting up b24 as an MCP server in agent hosts, stdio or HTTP with tokens."
    ),
    doc!(
        "packs/automation",
        "packs/automation.md",
        "Pack automation: business processes, robots, lists."
    ),
    doc!(
        "packs/boards",
        "packs/boards.md",
        "Pack boards: scrum and kanban."
    ),
    doc!(
        "packs/booking",
        "packs/booking.md",
        "Pack booking: online booking of resources."
    ),
    doc!("packs/bots", "packs/bots.md", "Pack bots: chat bots."),
    doc!(
        "packs/collab",
        "packs/collab.md",
        "Pack collab: workgroups, projects, feed, calendar, votes."
    ),
    doc!(
        "packs/commerce",
        "packs/commerce.md",
        "Pack commerce: online store, orders, payments, catalog."
    ),
    doc!(
        "packs/comms",
        "packs/comms.md",
        "Pack comms: chats, notifications, open lines, telephony, SMS."
    ),
    doc!(
        "packs/compliance",
        "packs/compliance.md",
        "Pack compliance: consents and e-signature."
    ),
    doc!(
        "packs/content",
        "packs/content.md",
        "Pack content: Drive files and folders, document generator."
    ),
    doc!(
        "packs/core",
        "packs/core.md",
        "Pack core: CRM, tasks, users, events, batch."
    ),
    doc!(
        "packs/diagnostics",
        "packs/diagnostics.md",
        "Pack diagnostics: what the portal and the credentials can do."
    ),
    doc!(
        "packs/mail",
        "packs/mail.md",
        "Pack mail: mailboxes and e-mail."
    ),
    doc!(
        "packs/platform",
        "packs/platform.md",
        "Pack platform: app storage, BI, AI engines, placements, user fields."
    ),
    doc!(
        "packs/services",
        "packs/services.md",
        "Pack services: work time."
    ),
    doc!(
        "packs/sites",
        "packs/sites.md",
        "Pack sites: sites and landing pages."
    ),
    doc!(
        "packs/templates",
        "packs/templates.md",
        "Pack templates: task templates."
    ),
];

/// The document's own title: its first `# ` heading.
fn title(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(str::trim)
}

/// A resource's URI.
pub fn uri(path: &str) -> String {
    format!("{PREFIX}{path}")
}

/// resources/list: every reference (a few dozen, so one page).
pub fn list() -> ListResourcesResult {
    let resources = DOCS
        .iter()
        .map(|d| {
            let r = Resource::new(uri(d.path), d.path.replace('/', "-"))
                .with_description(d.about)
                .with_mime_type(MARKDOWN)
                .with_size(d.text.len() as u64);
            match title(d.text) {
                Some(t) => r.with_title(t),
                None => r,
            }
        })
        .collect();
    ListResourcesResult::with_all_items(resources)
}

/// resources/templates/list: a pack's reference by its name.
pub fn templates() -> ListResourceTemplatesResult {
    let packs: Vec<&str> = DOCS
        .iter()
        .filter_map(|d| d.path.strip_prefix("packs/"))
        .collect();
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(format!("{PREFIX}packs/{{pack}}"), "pack")
            .with_title("A capability pack's reference")
            .with_description(format!(
                "Methods, risk classes and worked chains of one pack: {}.",
                packs.join(", ")
            ))
            .with_mime_type(MARKDOWN),
    ])
}

/// resources/read: the reference's exact text, or `-32002 Resource not found` naming the
/// URIs that exist.
pub fn read(uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let found = uri
        .strip_prefix(PREFIX)
        .and_then(|p| DOCS.iter().find(|d| d.path == p));
    match found {
        Some(d) => Ok(ReadResourceResult::new(vec![
            ResourceContents::text(d.text, uri).with_mime_type(MARKDOWN),
        ])),
        None => Err(ErrorData::resource_not_found(
            format!(
                "no resource {uri:?}: b24 serves {PREFIX}playbook, {PREFIX}recipes, {PREFIX}scenarios, {PREFIX}setup, {PREFIX}mcp-setup and {PREFIX}packs/<pack> (see resources/list)"
            ),
            Some(json!({"uri": uri})),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_doc_has_a_title_and_a_unique_path() {
        let mut seen = std::collections::HashSet::new();
        for d in DOCS {
            assert!(title(d.text).is_some(), "{} has no # title", d.path);
            assert!(seen.insert(d.path), "{} twice", d.path);
        }
        assert!(read("b24://skill/packs/nope").is_err());
        assert!(read("file:///etc/passwd").is_err());
    }
}
