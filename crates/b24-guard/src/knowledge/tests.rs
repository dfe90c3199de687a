use super::check::check_against;
use super::*;
use crate::catalog::Catalog;

#[test]
fn every_line_parses_and_starts_with_its_name() {
    let k = Knowledge::builtin();
    let mut n = 0;
    for line in k.text.lines().skip(1) {
        assert!(line.starts_with(LINE_PREFIX), "{line:.80}");
        let d: MethodDoc =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:.120}"));
        assert_eq!(k.line(&d.method), Some(line));
        n += 1;
    }
    assert_eq!(n, k.len());
}

#[test]
fn the_documentation_examples_pass_the_strict_check() {
    let k = Knowledge::builtin();
    let mut bad = Vec::new();
    for line in k.text.lines().skip(1) {
        let d: MethodDoc = serde_json::from_str(line).unwrap();
        if let Some(x) = &d.example
            && let Err(e) = check_against(&d, x)
        {
            bad.push(e.to_string());
        }
    }
    for b in &bad {
        println!("{b}");
    }
    println!("{} bad", bad.len());
    assert!(bad.is_empty());
}

#[test]
fn catalog_methods_all_have_an_entry() {
    let k = Knowledge::builtin();
    for m in Catalog::builtin().search(None, None, None) {
        assert!(k.get(&m.name).is_some(), "{} has no entry", m.name);
    }
}

fn doc(m: &str) -> MethodDoc {
    Knowledge::builtin()
        .get(m)
        .unwrap_or_else(|| panic!("{m} has no entry"))
}

#[test]
fn strict_check_refuses_unknown_names_in_every_spelling() {
    use serde_json::json;
    let add = doc("crm.deal.add");
    assert!(add.status.enforceable());
    // documented names pass in any case; paging always passes
    for ok in [
        json!({"fields": {"TITLE": "x"}, "params": {"REGISTER_SONET_EVENT": "N"}}),
        json!({"FIELDS": {"TITLE": "x"}, "PARAMS": {"register_sonet_event": "N"}}),
        json!({"Fields": {"UF_CRM_1": "x", "PARENT_ID_153": 1, "SOMETHING_NEW": 1}}),
        json!({"fields[TITLE]": "x", "fields[UF_CRM_5]": "y", "start": "0"}),
    ] {
        assert_eq!(check_against(&add, &ok), Ok(()), "{ok}");
    }
    for (bad, what) in [
        (json!({"feilds": {"TITLE": "x"}}), "feilds"),
        (json!({"FEILDS": {}}), "FEILDS"),
        (json!({"fields": {}, "Evil": 1}), "Evil"),
        (json!({"evil[x]": 1}), "evil[x]"),
        (json!({"params": {"EVIL": "Y"}}), "params.EVIL"),
        (json!({"params[EVIL]": "Y"}), "params.EVIL"),
        (json!({"PARAMS[evil][0]": "Y"}), "params.evil"),
        (json!({"7": 1}), "7"),
        (json!({"fields[TITLE": "x"}), "fields[TITLE"),
    ] {
        let e = check_against(&add, &bad).unwrap_err();
        assert_eq!(e.parameter, what, "{bad}");
    }
}

#[test]
fn strict_check_leaves_alone_what_it_cannot_know() {
    use serde_json::json;
    // no complete list: nothing is refused
    for d in Knowledge::builtin().text.lines().skip(1) {
        let d: MethodDoc = serde_json::from_str(d).unwrap();
        if !d.status.enforceable() {
            assert_eq!(
                check_against(&d, &json!({"anything": 1})),
                Ok(()),
                "{}",
                d.method
            );
        }
    }
    // a method that takes nothing refuses everything but paging
    let cur = doc("user.current");
    assert_eq!(cur.status, DocStatus::None);
    assert!(check_against(&cur, &json!({"x": 1})).is_err());
    assert_eq!(check_against(&cur, &json!({"start": 50})), Ok(()));
    // user fields are never refused, even where the page lists no custom fields
    let quote = doc("crm.quote.add");
    assert_eq!(
        check_against(
            &quote,
            &json!({"fields": {"TITLE": "q", "UF_CRM_7": 1, "PARENT_ID_1040": 3}})
        ),
        Ok(())
    );
    assert!(check_against(&quote, &json!({"fields": {"TITEL": "q"}})).is_err());
    // filters are not parameter names
    let list = doc("crm.deal.list");
    assert_eq!(
        check_against(
            &list,
            &json!({"filter": {">=DATE_CREATE": "2024-01-01", "UF_CRM_1": 1}, "select": ["*", "UF_*"]})
        ),
        Ok(())
    );
    // positional params (array) are not judged
    assert_eq!(check_against(&cur, &json!([1, 2])), Ok(()));
}

#[test]
fn every_entry_is_documented_or_marked() {
    let mut counts = std::collections::BTreeMap::new();
    for m in Catalog::builtin().search(None, None, None) {
        let d = doc(&m.name);
        *counts.entry(d.status.as_str()).or_insert(0) += 1;
        if d.status == DocStatus::Undocumented {
            assert!(d.params.is_empty(), "{}", m.name);
        }
    }
    assert!(counts["complete"] > 1000, "{counts:?}");
    assert!(counts["undocumented"] < 100, "{counts:?}");
}

#[test]
fn methods_on_both_apis_are_not_checked() {
    use serde_json::json;
    // v2 documents `taskId`; REST 3.0 takes `id`
    assert_eq!(
        check::check_params("tasks.task.get", &json!({"id": 1})),
        Ok(())
    );
    assert!(check::check_params("crm.deal.get", &json!({"id": 1, "taskId": 2})).is_err());
}

#[test]
fn lookup_is_lazy_and_cheap() {
    let k = Knowledge {
        text: DATA,
        index: OnceLock::new(),
    };
    assert!(
        k.index.get().is_none(),
        "nothing is parsed before the first lookup"
    );
    let t = std::time::Instant::now();
    let d = k.get("crm.deal.add").expect("documented");
    let first = t.elapsed();
    let t = std::time::Instant::now();
    let _ = k.get("CRM.DEAL.UPDATE").expect("any case");
    let next = t.elapsed();
    println!(
        "first lookup (index {} names + one line) {first:?}, next {next:?}; {} bytes",
        k.len(),
        DATA.len()
    );
    assert_eq!(d.method, "crm.deal.add");
    assert!(first < std::time::Duration::from_millis(250), "{first:?}");
}

#[test]
fn takes_says_what_the_documentation_knows() {
    let k = Knowledge::builtin();
    assert_eq!(k.takes("crm.deal.list", "FILTER"), Some(true));
    assert_eq!(k.takes("crm.category.list", "filter"), Some(false));
    assert_eq!(k.takes("user.current", "start"), Some(true));
    assert_eq!(k.takes("user.get", "anything"), None, "open list");
    assert_eq!(k.takes("no.such.method", "id"), None);
}
