//! Method knowledge over the whole catalog: every method has an entry (documented, or marked
//! undocumented), and the strict check accepts what the documentation itself sends.

use b24_guard::Catalog;
use b24_guard::knowledge::{DocStatus, Knowledge, check::check_against};

#[test]
fn every_catalog_method_has_an_entry_or_an_undocumented_mark() {
    let k = Knowledge::builtin();
    let cat = Catalog::builtin();
    let mut documented = 0;
    let mut undocumented = Vec::new();
    for m in cat.search(None, None, None) {
        let d = k
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} has no knowledge entry", m.name));
        assert!(d.method.eq_ignore_ascii_case(&m.name));
        match d.status {
            DocStatus::Undocumented => undocumented.push(m.name.clone()),
            _ => documented += 1,
        }
        if let Some(x) = &d.example {
            assert_eq!(check_against(&d, x), Ok(()), "{}: its own example", m.name);
        }
    }
    assert_eq!(documented + undocumented.len(), cat.len());
    assert_eq!(k.len(), cat.len(), "one line per catalog method, no strays");
    assert!(documented > 1600, "{documented} documented");
    println!(
        "{documented} documented, {} undocumented: {undocumented:?}",
        undocumented.len()
    );
    let src = k.source().expect("the source line");
    assert_eq!(src["methods"].as_u64(), Some(cat.len() as u64));
}
