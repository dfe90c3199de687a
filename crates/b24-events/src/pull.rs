//! Offline events: `event.offline.get` with `clear=0` (rows are reserved under a `process_id`),
//! a local commit of the events *and* the `process_id` in one transaction, and only then
//! `event.offline.clear`. A crash at any point loses nothing:
//! - before the local commit: the rows stay reserved on the portal; at start-up we find
//!   reservations we never committed through `event.offline.list` and re-read them by
//!   `process_id`;
//! - after the commit, before the clear: the pending `process_id` is in our store; we clear it
//!   at the next start (the events are already queued; their keys dedupe a re-read).
//!
//! This recovery assumes one puller per portal (run extra workers with `--no-pull`).

use serde_json::{Value, json};

use crate::queue::{NewEvent, Store};
use crate::{EventsError, Result};

/// The key that identifies an offline event version: the portal's row ID plus its MESSAGE_ID.
pub fn offline_key(portal: &str, ev: &Value) -> Option<String> {
    let id = text(ev.get("ID")?);
    let mid = ev.get("MESSAGE_ID").map(text).unwrap_or_default();
    Some(format!("offline:{portal}:{id}:{mid}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `member`: with many portals, each pulled event names its portal in `auth` (as an online
/// event does), so handlers, per-portal queue depths and metrics can tell them apart.
fn to_events(portal: &str, member: Option<&str>, events: &[Value]) -> Result<Vec<NewEvent>> {
    events
        .iter()
        .map(|ev| {
            let key = offline_key(portal, ev)
                .ok_or_else(|| EventsError::Store(format!("offline event without ID: {ev}")))?;
            let mut payload = ev.clone();
            if let (Some(m), Some(o)) = (member, payload.as_object_mut()) {
                o.insert("auth".into(), json!({"member_id": m, "domain": portal}));
            }
            Ok(NewEvent {
                key,
                source: "offline".into(),
                name: ev.get("EVENT_NAME").map(text).unwrap_or_default(),
                payload,
            })
        })
        .collect()
}

/// Counters of one pull.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pulled {
    pub fetched: usize,
    pub new: usize,
    pub batches: usize,
}

async fn commit_and_clear(
    client: &b24::Client,
    store: &Store,
    events: &[Value],
    pid: &str,
    member: Option<&str>,
) -> Result<usize> {
    let portal = client.portal().to_string();
    let new = store
        .enqueue_offline(&to_events(&portal, member, events)?, pid)
        .await?;
    client
        .call("event.offline.clear", json!({"process_id": pid}))
        .await?;
    store.forget_process(pid).await?;
    Ok(new)
}

/// Finish what a previous run left: pending clears, and reservations never committed.
pub async fn recover(client: &b24::Client, store: &Store) -> Result<Pulled> {
    let pids: Vec<String> = store.pending_processes().await?;
    recover_with(client, store, pids, None).await
}

/// [`recover`] for one portal of many: only the reservations *this* portal lists (the store's
/// pending clears belong to every portal; a reservation we committed but never cleared is
/// still listed by its portal, and its keys dedupe the re-read).
pub async fn recover_portal(client: &b24::Client, store: &Store, member: &str) -> Result<Pulled> {
    recover_with(client, store, Vec::new(), Some(member)).await
}

async fn recover_with(
    client: &b24::Client,
    store: &Store,
    mut pids: Vec<String>,
    member: Option<&str>,
) -> Result<Pulled> {
    let mut p = Pulled::default();
    // Reservations on the portal that we may never have committed.
    let mut start = 0u64;
    loop {
        let r = client
            .call(
                "event.offline.list",
                json!({"filter": {"!PROCESS_ID": ""}, "start": start}),
            )
            .await?;
        for row in r.result.as_array().into_iter().flatten() {
            let pid = row.get("PROCESS_ID").map(text).unwrap_or_default();
            if !pid.is_empty() && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        match r.next {
            Some(n) if n > start => start = n,
            _ => break,
        }
    }
    for pid in pids {
        let r = client
            .call(
                "event.offline.get",
                json!({"process_id": pid, "clear": 0, "limit": 1000}),
            )
            .await?;
        let events: Vec<Value> = r
            .result
            .get("events")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        p.fetched += events.len();
        p.new += commit_and_clear(client, store, &events, &pid, member).await?;
        p.batches += 1;
    }
    Ok(p)
}

/// Pull until the portal's queue is empty (or `max_batches` reached).
pub async fn pull(
    client: &b24::Client,
    store: &Store,
    limit: u32,
    max_batches: usize,
) -> Result<Pulled> {
    pull_portal(client, store, limit, max_batches, None).await
}

/// [`pull`] for one portal of many: each event is tagged with the portal's `member_id`.
pub async fn pull_portal(
    client: &b24::Client,
    store: &Store,
    limit: u32,
    max_batches: usize,
    member: Option<&str>,
) -> Result<Pulled> {
    let mut p = Pulled::default();
    while p.batches < max_batches {
        let r = client
            .call_with(
                "event.offline.get",
                json!({"clear": 0, "limit": limit}),
                b24::CallOptions::write(false),
            )
            .await?;
        let events: Vec<Value> = r
            .result
            .get("events")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        let pid = r
            .result
            .get("process_id")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let Some(pid) = pid.filter(|_| !events.is_empty()) else {
            break;
        };
        p.fetched += events.len();
        p.new += commit_and_clear(client, store, &events, &pid, member).await?;
        p.batches += 1;
        if events.len() < limit as usize {
            break;
        }
    }
    Ok(p)
}
