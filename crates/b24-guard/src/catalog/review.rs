//! The risk review over the whole catalog (issue 12). A method whose name suggests one thing
//! and whose documentation says another must be listed here with its reviewed risk, so a
//! regenerated catalog cannot silently move it back.

use std::collections::HashSet;

use serde_json::json;

use super::generate::{data_rows, parse_corrections, parse_overrides};
use super::rules::verb_of;
use super::*;

const CATALOG: &str = include_str!("../../data/catalog.tsv");
const OVERRIDES: &str = include_str!("../../data/overrides.tsv");
const CORRECTIONS: &str = include_str!("../../data/corrections.tsv");
const EXTRA: &str = include_str!("../../data/extra.tsv");

use Risk::{Admin, Destructive, Read, Write};

/// Every reviewed case: the ones named in issue 12 and the ones the sweep found.
const REVIEWED: &[(&str, Risk)] = &[
    // Last segment `messages` / `read`, but they post, edit, delete or mark messages.
    ("imconnector.send.messages", Write),
    ("imconnector.update.messages", Write),
    ("imconnector.delete.messages", Destructive),
    ("im.dialog.read", Write),
    ("im.dialog.read.all", Write),
    ("im.notify.read", Write),
    ("im.notify.read.all", Write),
    ("im.notify.read.list", Write),
    ("imbot.v2.Chat.Message.read", Write),
    // `get…` that create something.
    ("disk.file.getExternalLink", Admin),
    ("disk.folder.getExternalLink", Admin),
    ("crm.invoice.getexternallink", Write),
    ("salescenter.payment.getPublicUrl", Write),
    ("disk.storage.getForApp", Write),
    ("imbot.v2.Event.get", Write),
    ("im.v2.Event.get", Write),
    ("entity.rights", Admin),
    // `get…` that only compute a URL: reads.
    ("landing.landing.getpublicurl", Read),
    ("landing.site.getPublicUrl", Read),
    // Reads the rules used to refuse as writes.
    ("crm.status.entity.items", Read),
    ("crm.enum.activitydirection", Read),
    ("crm.enum.activitynotifytype", Read),
    ("crm.enum.activitypriority", Read),
    ("crm.enum.activitystatus", Read),
    ("crm.enum.activitytype", Read),
    ("crm.enum.addresstype", Read),
    ("crm.enum.contenttype", Read),
    ("crm.enum.ownertype", Read),
    ("crm.enum.settings.mode", Read),
    ("crm.enum.fields", Read),
    ("task.stages.canmovetask", Read),
    ("user.admin", Read),
    ("access.name", Read),
    ("calendar.event.get.nearest", Read),
    ("crm.calllist.statuslist", Read),
    ("crm.requisite.preset.countries", Read),
    ("crm.requisite.preset.field.availabletoadd", Read),
    ("humanresources.employee.multidepartment", Read),
    ("humanresources.employee.subordinates", Read),
    ("lists.element.get.file.url", Read),
    ("lists.get.iblock.type.id", Read),
    ("log.blogpost.getusers.important", Read),
    ("mail.mailbox.senders", Read),
    ("sonet_group.user.groups", Read),
    ("userconsent.agreement.text", Read),
    ("landing.site.fullExport", Read),
    ("landing.repo.checkContent", Read),
    ("landing.landing.resolveIdByPublicUrl", Read),
    ("bizproc.workflow.instances", Read),
    ("timeman.settings", Read),
    // Over-strict before: plain writes.
    ("crm.timeline.bindings.bind", Write),
    ("crm.timeline.bindings.unbind", Write),
    ("task.item.deletefromfavorite", Write),
    ("tasks.task.favorite.remove", Write),
    // Under-strict before: to the recycle bin like disk.file.markDeleted, or settings for all.
    ("landing.landing.markdeletedblock", Destructive),
    ("landing.site.markFolderDelete", Destructive),
    (
        "crm.lead.details.configuration.forceCommonScopeForAll",
        Admin,
    ),
    (
        "crm.deal.details.configuration.forceCommonScopeForAll",
        Admin,
    ),
    (
        "crm.contact.details.configuration.forceCommonScopeForAll",
        Admin,
    ),
    (
        "crm.company.details.configuration.forceCommonScopeForAll",
        Admin,
    ),
    (
        "crm.item.details.configuration.forceCommonScopeForAll",
        Admin,
    ),
    // Earlier reviews, still pinned.
    ("event.offline.get", Destructive),
    ("event.offline.list", Read),
    ("event.offline.error", Write),
    ("bizproc.workflow.kill", Destructive),
    ("disk.folder.deletetree", Destructive),
    ("event.bind", Admin),
    ("batch", Read),
    // Added from the documentation (missing from the official list).
    ("crm.dealcategory.stage.list", Read),
    ("crm.item.fields", Read),
    ("crm.status.fields", Read),
    ("crm.status.entity.types", Read),
    ("user.access", Read),
    ("imbot.v2.Bot.list", Read),
    ("imbot.v2.Command.unregister", Destructive),
    ("imbot.v2.Command.update", Write),
    ("app.option.set", Admin),
    ("pull.application.push.add", Admin),
    ("ai.engine.unregister", Destructive),
    ("crm.automation.trigger.delete", Destructive),
    ("department.delete", Destructive),
    ("humanresources.employee.search", Read),
    ("event.test", Write),
    ("landing.repo.bind", Admin),
];

fn looks_like_read(verb: &str) -> bool {
    [
        "get", "list", "fields", "items", "read", "messages", "status", "types", "search", "count",
    ]
    .contains(&verb)
        || ["get", "list", "is", "has", "check", "search"]
            .iter()
            .any(|p| verb.starts_with(p))
        || (verb.starts_with("can") && !verb.starts_with("cancel"))
}

fn looks_like_write(verb: &str) -> bool {
    [
        "add", "update", "set", "send", "delete", "remove", "register", "bind", "start",
    ]
    .iter()
    .any(|p| verb.starts_with(p))
}

#[test]
fn reviewed_risks_hold() {
    let c = Catalog::builtin();
    let mut bad = Vec::new();
    for (m, want) in REVIEWED {
        match c.get(m) {
            Some(info) if info.risk == *want => {}
            Some(info) => bad.push(format!("{m}: {} (reviewed: {want})", info.risk)),
            None => bad.push(format!("{m}: missing from the catalog")),
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Over the whole catalog: a method whose last segment reads like a read but is not classed
/// as one (or the other way round) must be in the reviewed table, and no method whose last
/// segment is `read` or `messages` is a read.
#[test]
fn every_misleading_name_is_reviewed() {
    let c = Catalog::builtin();
    let reviewed: HashSet<String> = REVIEWED.iter().map(|(m, _)| m.to_lowercase()).collect();
    let mut unreviewed = Vec::new();
    for m in c.search(None, None, None) {
        let verb = verb_of(&m.name);
        if matches!(verb.as_str(), "read" | "messages") {
            assert_ne!(m.risk, Read, "{} changes state", m.name);
        }
        if verb == "getexternallink" {
            assert_ne!(m.risk, Read, "{} creates a public link", m.name);
        }
        let misleading = (looks_like_read(&verb) && m.risk != Read && verb != "getnext")
            || (looks_like_write(&verb) && m.risk == Read);
        // A read-looking name that the rules class as destructive (delete…/remove…) is not
        // misleading: `getdeleted…` does not exist, and event.offline.get is in the table.
        if misleading && !reviewed.contains(&m.name.to_lowercase()) {
            unreviewed.push(format!("{} is {}", m.name, m.risk));
        }
    }
    assert!(
        unreviewed.is_empty(),
        "review these against the documentation and add them to REVIEWED: {unreviewed:#?}"
    );
}

#[test]
fn only_reads_page() {
    let c = Catalog::builtin();
    for m in c.search(None, None, None) {
        assert!(
            !m.lists || m.risk == Read,
            "{} pages but is {}",
            m.name,
            m.risk
        );
    }
    assert!(!c.get("im.notify.read.list").unwrap().lists);
    assert!(c.get("crm.dealcategory.stage.list").unwrap().lists);
}

#[test]
fn names_are_unique_and_strict() {
    let mut seen = HashSet::new();
    let mut rows = 0;
    for line in CATALOG.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c.len(), 11, "{line}");
        let lower = c[0].to_ascii_lowercase();
        assert!(
            !lower.is_empty()
                && lower.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'.'
                    || b == b'_')
                && !lower.starts_with('.')
                && !lower.ends_with('.')
                && !lower.contains(".."),
            "name outside [a-z0-9._]: {:?}",
            c[0]
        );
        assert!(seen.insert(lower), "{} appears twice", c[0]);
        assert!(Risk::parse(c[2]).is_some(), "{line}");
        assert!(matches!(c[10], "rule" | "override"), "{line}");
        rows += 1;
    }
    assert_eq!(rows, Catalog::builtin().len());
}

#[test]
fn lookups_ignore_case() {
    let c = Catalog::builtin();
    let info = c.get("imbot.v2.chat.message.read").expect("lowercased");
    assert_eq!(info.name, "imbot.v2.Chat.Message.read");
    assert_eq!(
        c.get(" IMBOT.V2.CHAT.MESSAGE.READ ").map(|i| i.risk),
        Some(Write)
    );
    assert!(c.get("CRM.LEAD.LIST").is_some());
}

#[test]
fn overrides_are_reviewed_and_apply() {
    let c = Catalog::builtin();
    let parsed = parse_overrides(OVERRIDES);
    let mut names = HashSet::new();
    for cols in data_rows(OVERRIDES) {
        assert_eq!(cols.len(), 3, "override needs name, risk, reason: {cols:?}");
        assert!(Risk::parse(cols[1]).is_some(), "bad risk: {cols:?}");
        assert!(cols[2].len() >= 8, "override without a reason: {cols:?}");
        assert!(names.insert(cols[0].to_lowercase()), "{} twice", cols[0]);
        let info = c
            .get(cols[0])
            .unwrap_or_else(|| panic!("override for a method not in the catalog: {}", cols[0]));
        assert_eq!(Some(info.risk), Risk::parse(cols[1]), "{}", cols[0]);
    }
    assert_eq!(parsed.len(), names.len());
}

#[test]
fn corrections_and_additions_land() {
    let c = Catalog::builtin();
    let corrections = parse_corrections(CORRECTIONS);
    assert!(!corrections.is_empty());
    for (listed, real) in &corrections {
        assert!(c.get(listed).is_none(), "{listed} should be gone");
        if let Some(real) = real {
            assert!(c.get(real).is_some(), "{real} should be in the catalog");
        }
    }
    let mut added = 0;
    for line in EXTRA.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 6, "{line}");
        let info = c
            .get(cols[0])
            .unwrap_or_else(|| panic!("{} not added", cols[0]));
        assert_eq!(info.doc_path, cols[5]);
        added += 1;
    }
    assert!(added >= 40, "{added}");
    let stage = c.get("crm.dealcategory.stage.list").unwrap();
    assert_eq!((stage.risk, stage.deprecated), (Read, true));
    assert!(
        stage
            .doc_url()
            .ends_with("crm-deal-category-stage-list.html")
    );
}

#[test]
fn param_dependent_risks() {
    let c = Catalog::builtin();
    assert_eq!(
        c.effective_risk("entity.rights", &json!({"ENTITY": "x"})),
        Some(Read)
    );
    assert_eq!(
        c.effective_risk(
            "entity.rights",
            &json!({"ENTITY": "x", "access": {"AU": "R"}})
        ),
        Some(Admin)
    );
    assert_eq!(
        c.effective_risk("imbot.v2.Event.get", &json!({"botId": 1})),
        Some(Read)
    );
    assert_eq!(
        c.effective_risk("imbot.v2.Event.get", &json!({"botId": 1, "offset": 0})),
        Some(Read)
    );
    assert_eq!(
        c.effective_risk("imbot.v2.Event.get", &json!({"botId": 1, "Offset": 57})),
        Some(Write)
    );
    assert_eq!(
        c.effective_risk("im.v2.Event.get", &json!({"limit": 50})),
        Some(Read)
    );
    assert_eq!(
        c.effective_risk("im.v2.Event.get", &json!({"offset": "2000"})),
        Some(Write)
    );
    assert_eq!(
        c.effective_risk("event.offline.get", &json!({"CLEAR": "0"})),
        Some(Write)
    );
}

#[test]
fn is_write_follows_the_catalog() {
    let c = Catalog::builtin();
    let none = json!({});
    assert!(!c.is_write("crm.lead.list", &none));
    assert!(!c.is_write("CRM.Status.Entity.Items", &none));
    assert!(c.is_write("crm.lead.add", &none));
    assert!(c.is_write("crm.lead.delete", &none));
    assert!(c.is_write("imconnector.send.messages", &none));
    assert!(c.is_write("im.dialog.read", &none));
    assert!(c.is_write("disk.file.getExternalLink", &none));
    assert!(
        c.is_write("no.such.method", &none),
        "unknown methods are writes"
    );
    assert!(c.is_write("event.offline.get", &json!({"clear": 0})));
    assert!(c.is_write("event.offline.get", &none));
    assert!(!c.is_write("entity.rights", &json!({"ENTITY": "x"})));
    assert!(c.is_write("entity.rights", &json!({"ENTITY": "x", "ACCESS": {}})));
}

#[test]
fn is_write_of_a_batch_checks_every_command() {
    let c = Catalog::builtin();
    let reads = json!({"cmd": {"a": "crm.lead.list?start=0", "b": "user.current"}});
    assert!(!c.is_write("batch", &reads));
    assert!(!c.is_write(
        "batch",
        &json!({"CMD": ["crm.deal.get?id=1", "crm.enum.ownertype"]})
    ));
    for params in [
        json!({"cmd": {"a": "crm.lead.list", "b": "crm.lead.delete?id=1"}}),
        json!({"cMd": {"a": "crm.lead.delete?id=1"}}),
        json!({"cmd": {"a": "crm.lead.list"}, "CMD": {"b": "crm.lead.list"}}),
        json!({"cmd": {"a": "batch?cmd[x]=crm.lead.delete"}}),
        json!({"cmd": {"a": "event.offline.get?clear=0"}}),
        json!({"cmd": {"a": "entity.rights?ENTITY=x&ACCESS[AU]=X"}}),
        json!({"cmd": {"a": "entity.rights?ENTITY=x"}}),
        json!({"cmd": {"a": "im.v2.Event.get?offset=2000"}}),
        json!({"cmd": {"a": "no.such.method"}}),
        json!({"cmd": {"a": "crm.lead.list%3Fx"}}),
        json!({"cmd": {"a": 5}}),
        json!({"cmd": {}}),
        json!({"cmd": "crm.lead.list"}),
        json!({"halt": 0}),
        json!([]),
    ] {
        assert!(c.is_write("batch", &params), "{params}");
    }
}
