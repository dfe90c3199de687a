//! Catalog behaviour: pinned risks, parameter-dependent risk, regeneration.

use super::*;

#[test]
fn pinned_risks() {
    let c = Catalog::builtin();
    assert!(c.len() >= 1600, "catalog has {} methods", c.len());
    for (m, r) in [
        ("bizproc.workflow.kill", Risk::Destructive),
        ("bizproc.workflow.terminate", Risk::Destructive),
        ("disk.folder.deletetree", Risk::Destructive),
        ("event.offline.get", Risk::Destructive),
        ("event.offline.clear", Risk::Destructive),
        ("crm.lead.delete", Risk::Destructive),
        ("crm.lead.list", Risk::Read),
        ("crm.lead.add", Risk::Write),
        ("crm.deal.update", Risk::Write),
        ("event.bind", Risk::Admin),
        ("mail.message.send", Risk::Write),
        ("user.current", Risk::Read),
        ("profile", Risk::Read),
        ("batch", Risk::Read),
    ] {
        let got = c.get(m).map(|i| i.risk);
        assert_eq!(got, Some(r), "{m}");
    }
    assert_eq!(
        c.effective_risk("event.offline.get", &serde_json::json!({"clear": 0})),
        Some(Risk::Write)
    );
    assert_eq!(
        c.effective_risk("event.offline.get", &serde_json::json!({})),
        Some(Risk::Destructive)
    );
    assert!(c.get("crm.lead.list").unwrap().lists);
    assert_eq!(c.get("crm.lead.list").unwrap().pack, "core");
    assert_eq!(c.get("bizproc.workflow.kill").unwrap().pack, "automation");
    assert!(
        c.get("crm.lead.get")
            .unwrap()
            .doc_url()
            .starts_with("https://apidocs.bitrix24.com/api-reference/")
    );
    let packs: std::collections::HashSet<&str> = c.all().map(|m| m.pack.as_str()).collect();
    assert!(packs.len() >= 16, "{packs:?}");
}

#[test]
fn catalog_is_up_to_date() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/methods.tsv");
    let Ok(methods) = std::fs::read_to_string(&src) else {
        eprintln!(
            "skipped: {} not found (the shared reference sits beside the repo in CI)",
            src.display()
        );
        return;
    };
    let fresh = generate_from(Sources {
        methods: &methods,
        additions: include_str!("../../data/extra.tsv"),
        corrections: include_str!("../../data/corrections.tsv"),
        overrides: include_str!("../../data/overrides.tsv"),
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/catalog.tsv");
    if std::env::var("B24_REGEN_CATALOG").is_ok() {
        std::fs::write(&path, &fresh).unwrap();
    }
    assert!(
        fresh == include_str!("../../data/catalog.tsv"),
        "data/catalog.tsv is stale: run `B24_REGEN_CATALOG=1 cargo test -p b24-guard --lib catalog_is_up_to_date`"
    );
}
