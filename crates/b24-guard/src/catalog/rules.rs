//! The verb rules: the risk, pack, paging and idempotency a method gets from its name and from
//! who may call it. Rules cover the regular cases; `data/overrides.tsv` pins the reviewed
//! exceptions, and the unit tests in `review.rs` pin both.

use super::Risk;

/// Capability packs (the original skill's 16), most specific first when matching.
pub const PACKS: &[(&str, &[&str])] = &[
    (
        "diagnostics",
        &[
            "method.get",
            "methods",
            "events",
            "feature.get",
            "scope",
            "server.time",
            "app.info",
            "profile",
            "access.name",
            "user.access",
        ],
    ),
    ("boards", &["tasks.api.scrum.*", "tasks.scrum.*"]),
    ("templates", &["tasks.template.*"]),
    ("bots", &["imbot.v2.*", "imbot.*"]),
    ("booking", &["booking.*"]),
    ("mail", &["mail.*", "mailservice.*"]),
    (
        "core",
        &[
            "batch",
            "user.*",
            "department.*",
            "crm.*",
            "tasks.task.*",
            "task.*",
            "tasks.*",
            "event.*",
            "humanresources.*",
        ],
    ),
    (
        "comms",
        &[
            "im.*",
            "imopenlines.*",
            "imconnector.*",
            "messageservice.*",
            "telephony.*",
            "voximplant.*",
            "call.*",
        ],
    ),
    (
        "automation",
        &["bizproc.*", "crm.automation.*", "lists.*", "rpa.*"],
    ),
    (
        "collab",
        &[
            "sonet_group.*",
            "socialnetwork.*",
            "log.*",
            "calendar.*",
            "vote.*",
        ],
    ),
    (
        "content",
        &[
            "disk.*",
            "file.*",
            "files.*",
            "documentgenerator.*",
            "note.*",
        ],
    ),
    (
        "commerce",
        &["sale.*", "catalog.*", "pay.*", "salescenter.*"],
    ),
    ("services", &["timeman.*", "calendar.*"]),
    (
        "platform",
        &[
            "entity.*",
            "biconnector.*",
            "ai.*",
            "app.*",
            "placement.*",
            "userfield.*",
            "userfieldtype.*",
            "userfieldconfig.*",
            "rest.*",
            "main.*",
            "pull.*",
        ],
    ),
    ("sites", &["landing.*"]),
    ("compliance", &["userconsent.*", "sign.*"]),
];

fn glob_match(pat: &str, name: &str) -> bool {
    match pat.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pat == name,
    }
}

/// The pack of a method (`other` when no pack claims it).
pub fn pack_of(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    PACKS
        .iter()
        .find(|(_, pats)| pats.iter().any(|p| glob_match(p, &n)))
        .map(|(p, _)| *p)
        .unwrap_or("other")
}

/// Last segments that only read. `read` and `messages` are deliberately absent: `im.dialog.read`
/// marks messages as read and `imconnector.send.messages` posts them (reviewed in issue 12).
const READ_VERBS: &[&str] = &[
    "get",
    "list",
    "fields",
    "current",
    "search",
    "count",
    "tail",
    "info",
    "version",
    "status",
    "types",
    "items",
    "countries",
    "instances",
    "download",
    "check",
    "checkcontent",
    "find",
    "filter",
    "export",
    "fullexport",
    "access",
    "diskstoragegetid",
    "openapi",
    "settings",
    "history",
    "children",
    "stages",
];

/// `get…` verbs that are not reads: `disk.file.getExternalLink` creates (on first request) a link
/// that opens the file to anyone on the internet, so it is classed with access changes.
const GET_BUT_ADMIN: &[&str] = &["getexternallink"];

/// Name prefixes under which every method only reads (reference enumerations).
const READ_PREFIXES: &[&str] = &["crm.enum."];

const DESTRUCTIVE_VERBS: &[&str] = &[
    "delete",
    "remove",
    "kill",
    "terminate",
    "deletetree",
    "clear",
    "purge",
    "erase",
    "wipe",
    "drop",
    "uninstall",
    "deletebyfilter",
    "markdeleted",
    "markdelete",
    "markdeletedblock",
    "markfolderdelete",
    "unregister",
    "deleteblock",
    "destroy",
    "cleanup",
    "truncate",
];

/// Verbs that change settings for everybody, whoever may call them.
const ADMIN_VERBS: &[&str] = &["forcecommonscopeforall"];

/// The last name segment, lowercased: the verb the rules read.
pub(crate) fn verb_of(name: &str) -> String {
    name.rsplit('.').next().unwrap_or("").to_ascii_lowercase()
}

/// The risk a method gets from the rules (before overrides).
pub fn classify(name: &str, who_can_call: &str) -> Risk {
    let n = name.to_ascii_lowercase();
    let verb = verb_of(&n);
    let verb = verb.as_str();
    let destructive = DESTRUCTIVE_VERBS.contains(&verb)
        || verb.starts_with("delete")
        || verb.starts_with("remove")
        || verb.starts_with("clear");
    if destructive {
        return Risk::Destructive;
    }
    if GET_BUT_ADMIN.contains(&verb) {
        return Risk::Admin;
    }
    let read = READ_VERBS.contains(&verb)
        || READ_PREFIXES.iter().any(|p| n.starts_with(p))
        || (verb.starts_with("get") && !verb.starts_with("getnext"))
        || verb.starts_with("list")
        || verb.starts_with("is")
        || verb.starts_with("has")
        || (verb.starts_with("can") && !verb.starts_with("cancel"))
        || verb.starts_with("search")
        || verb.starts_with("resolve");
    if read {
        return Risk::Read;
    }
    let who = who_can_call.to_ascii_lowercase();
    if ADMIN_VERBS.contains(&verb)
        || who.starts_with("administrator")
        || who.starts_with("bitrix24 administrator")
        || n.ends_with(".bind")
        || n.ends_with(".unbind")
    {
        return Risk::Admin;
    }
    Risk::Write
}

/// A list method (pages with `start`/`next`). Only reads page: `im.notify.read.list` ends in
/// `list` but marks notifications, and a pager must never repeat a write.
pub(crate) fn lists(name: &str, risk: Risk) -> bool {
    let verb = verb_of(name);
    risk == Risk::Read
        && (verb == "list"
            || verb == "getlist"
            || verb == "tail"
            || name.eq_ignore_ascii_case("event.offline.list"))
}

/// Repeating the call with the same params has the same effect as doing it once.
pub(crate) fn idempotent(name: &str, risk: Risk) -> bool {
    let verb = verb_of(name);
    match risk {
        Risk::Read => true,
        Risk::Destructive => verb.starts_with("delete") || verb.starts_with("remove"),
        _ => matches!(
            verb.as_str(),
            "update"
                | "set"
                | "unset"
                | "bind"
                | "unbind"
                | "rename"
                | "setowner"
                | "modify"
                | "pin"
                | "unpin"
                | "read"
        ),
    }
}
