//! Export: every item exactly once (with seeded faults, with records added and deleted during
//! the export, across a resume), at ⌈N/2,500⌉ requests plus the probe.

use std::collections::BTreeMap;

use b24::export::{ExportOptions, Progress, Strategy, pages};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::batch::sandbox;

fn id(v: &Value) -> u64 {
    v.get("ID")
        .or_else(|| v.get("id"))
        .and_then(|x| {
            x.as_str()
                .map(|s| s.parse().unwrap())
                .or_else(|| x.as_u64())
        })
        .unwrap()
}

async fn collect(client: &b24::Client, opts: ExportOptions) -> (BTreeMap<u64, u32>, Progress) {
    let mut seen = BTreeMap::new();
    let mut last = None;
    let mut s = Box::pin(pages(client.clone(), opts));
    while let Some(p) = s.next().await {
        let p = p.unwrap();
        for it in &p.items {
            *seen.entry(id(it)).or_insert(0) += 1;
        }
        last = Some(p.progress);
    }
    (seen, last.unwrap())
}

#[tokio::test]
async fn keyset_exports_every_item_once_in_few_requests() {
    let (sb, client, _d) = sandbox(12_345, "").await;
    let mut o = ExportOptions::new("crm.lead.list", json!({"select": ["ID", "TITLE"]}));
    o.strategy = Strategy::Auto;
    let (seen, progress) = collect(&client, o).await;
    assert_eq!(seen.len(), 12_345);
    assert!(seen.values().all(|&n| n == 1));
    assert!(progress.is_done());
    assert_eq!(progress.emitted, 12_345);
    let requests = sb.stats().requests;
    assert!(
        requests <= 12_345u64.div_ceil(2500) + 2,
        "{requests} requests"
    );
}

#[tokio::test]
async fn seeded_faults_still_give_every_item_exactly_once() {
    // The spec's rates, then much heavier ones so that every kind of fault surely fires.
    for spec in [
        "rate503=0.05,rate500=0.01,drop=0.01,expire=0.005",
        "rate503=0.15,rate500=0.05,drop=0.05,expire=0.05",
    ] {
        let (sb, client, _d) = sandbox(6_000, spec).await;
        let mut o = ExportOptions::new("crm.lead.list", json!({}));
        o.concurrency = 2;
        let (seen, p) = collect(&client, o).await;
        assert_eq!(seen.len(), 6_000, "{spec}");
        assert!(seen.values().all(|&n| n == 1), "{spec}");
        assert_eq!(p.emitted, 6_000);
        if spec.contains("0.15") {
            assert!(sb.stats().faults_injected > 0, "faults fired");
        }
    }
}

#[tokio::test]
async fn sparse_ids_filters_and_crm_item_shape() {
    let (_sb, client, _d) = sandbox(0, "").await;
    // Sparse IDs: add 600 leads, delete two of every three.
    let mut b = b24::batch::Batch::new();
    for i in 0..600 {
        b.add(&format!("a{i}"), "crm.lead.add", json!({"fields": {"TITLE": format!("t{i}"), "STATUS_ID": if i % 2 == 0 { "NEW" } else { "IN_PROCESS" }}})).unwrap();
    }
    let ids: Vec<u64> = b
        .run(&client)
        .await
        .into_iter()
        .map(|(_, o)| match o {
            b24::batch::Outcome::Ok { result, .. } => result
                .as_u64()
                .or_else(|| result.as_str().and_then(|s| s.parse().ok()))
                .unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    let mut d = b24::batch::Batch::new();
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        d.add(&format!("d{i}"), "crm.lead.delete", json!({"id": id}))
            .unwrap();
    }
    assert!(d.run(&client).await.iter().all(|(_, o)| o.is_ok()));
    let (seen, _) = collect(&client, ExportOptions::new("crm.lead.list", json!({}))).await;
    assert_eq!(seen.len(), 200);
    let (seen, _) = collect(
        &client,
        ExportOptions::new("crm.lead.list", json!({"filter": {"STATUS_ID": "NEW"}})),
    )
    .await;
    assert_eq!(seen.len(), 100, "every third of the even ones");
    let (seen, _) = collect(
        &client,
        ExportOptions::new("crm.item.list", json!({"entityTypeId": 1})),
    )
    .await;
    assert_eq!(seen.len(), 200);
    let mut off = ExportOptions::new("crm.lead.list", json!({}));
    off.strategy = Strategy::Offset;
    let (seen, p) = collect(&client, off).await;
    assert_eq!(seen.len(), 200);
    assert!(p.is_done());
}

#[tokio::test]
async fn changes_during_export_and_resume_emit_each_item_once() {
    let (_sb, client, _d) = sandbox(5_000, "").await;
    let mut o = ExportOptions::new("crm.lead.list", json!({}));
    o.concurrency = 1;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut s = Box::pin(pages(client.clone(), o.clone()));
    // Take one page, then "crash": keep only the progress of the last page consumed.
    let mut saved = None;
    for _ in 0..1 {
        let p = s.next().await.unwrap().unwrap();
        for it in &p.items {
            *seen.entry(id(it)).or_insert(0) += 1;
        }
        saved = Some(p.progress);
    }
    drop(s);
    let saved = saved.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cp.json");
    saved.save(&file).unwrap();
    // Meanwhile: delete a not-yet-exported lead and one already exported, add a new one.
    client
        .call("crm.lead.delete", json!({"id": 4_000}))
        .await
        .unwrap();
    client
        .call("crm.lead.delete", json!({"id": 3}))
        .await
        .unwrap();
    client
        .call("crm.lead.add", json!({"fields": {"TITLE": "late"}}))
        .await
        .unwrap();
    o.resume = Progress::load(&file).unwrap();
    let (rest, p) = collect(&client, o).await;
    for (k, n) in rest {
        *seen.entry(k).or_insert(0) += n;
    }
    assert!(seen.values().all(|&n| n == 1), "duplicates");
    assert!(!seen.contains_key(&4_000));
    assert!(seen.contains_key(&3), "exported before it was deleted");
    assert_eq!(seen.len(), 4_999);
    assert_eq!(p.emitted, 4_999);
}

/// Offset with several chunks in flight: heavy seeded faults, every item exactly once and in
/// order; a resume from a checkpoint taken half-way emits exactly the rest.
#[tokio::test]
async fn offset_in_parallel_keeps_order_and_exactly_once_through_faults_and_resume() {
    let (sb, client, _d) = sandbox(7_321, "rate503=0.15,rate500=0.05,drop=0.05").await;
    let mut o = ExportOptions::new("crm.lead.list", json!({"select": ["ID"]}));
    o.strategy = Strategy::Offset;
    o.concurrency = 4;
    let mut s = Box::pin(pages(client.clone(), o.clone()));
    let mut ids = Vec::new();
    let mut half = None;
    while let Some(p) = s.next().await {
        let p = p.unwrap();
        ids.extend(p.items.iter().map(id));
        if half.is_none() && ids.len() >= 3_000 {
            half = Some((ids.len(), p.progress.clone()));
        }
    }
    assert_eq!(ids.len(), 7_321);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "pages out of order");
    assert!(sb.stats().faults_injected > 0);
    let (done, cp) = half.unwrap();
    assert_eq!(cp.pending.len(), 1, "the checkpoint is one range");
    o.resume = Some(cp);
    let (rest, p) = collect(&client, o).await;
    assert_eq!(rest.len(), 7_321 - done);
    assert!(rest.values().all(|&n| n == 1));
    assert_eq!(*rest.keys().next().unwrap(), ids[done]);
    assert!(p.is_done());
}
