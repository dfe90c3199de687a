//! Typed results: `Response::json::<T>()` and `export::items_as::<T>()`.

use b24::Error;
use b24::export::{ExportOptions, items_as};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::batch::sandbox;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct Lead {
    id: String,
    title: String,
}

#[tokio::test]
async fn responses_and_exports_decode_into_caller_types() {
    let (_sb, client, _d) = sandbox(120, "").await;
    let r = client
        .call("crm.lead.list", json!({"select": ["ID", "TITLE"]}))
        .await
        .unwrap();
    let leads: Vec<Lead> = r.json().unwrap();
    assert_eq!(leads.len(), 50);
    assert!(
        leads
            .iter()
            .all(|l| !l.id.is_empty() && !l.title.is_empty())
    );

    // A type that does not fit: the error names where, not just what.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        #[serde(rename = "ID")]
        id: Vec<u8>,
    }
    let e = r.json::<Vec<Wrong>>().unwrap_err();
    assert!(
        matches!(&e, Error::Decode { reason, .. } if reason.contains("[0].ID")),
        "{e}"
    );

    let o = ExportOptions::new("crm.lead.list", json!({"select": ["ID", "TITLE"]}));
    let all: Vec<Lead> = items_as::<Lead, _>(client.clone(), o)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 120);
    let mut ids: Vec<u64> = all.iter().map(|l| l.id.parse().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 120);
}
