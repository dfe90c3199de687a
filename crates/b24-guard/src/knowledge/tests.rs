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
