//! The offset strategy: `start=N` pages in order, for lists without a usable ID order.

use std::collections::BTreeMap;

use super::*;

pub(super) async fn offset<T: Transport + Clone + 'static>(
    transport: T,
    opts: ExportOptions,
    mut progress: Progress,
    tx: &Tx,
) -> Result<(), Error> {
    let method = opts.method.clone();
    let mut base = opts.params.as_object().cloned().unwrap_or_default();
    base.retain(|k, _| !k.eq_ignore_ascii_case("start"));
    let page_cmd = |page: u64| -> String {
        let mut p = base.clone();
        p.insert("start".into(), json!((page - 1) * PAGE as u64));
        format!("{method}?{}", query::encode(&Value::Object(p)))
    };
    if !progress.started {
        let mut cmd = Map::new();
        cmd.insert("p".into(), Value::String(page_cmd(1)));
        let mut blocked = 0;
        let (mut reply, o) = loop {
            let resp = send_read(&transport, cmd.clone()).await?;
            let reply = Reply::from_result(resp.result);
            let o = reply.outcome("p");
            if matches!(&o, Outcome::Error { code, .. } if is_block(code))
                && blocked < BLOCKED_RESENDS
            {
                // Blocked: the next (patient) send waits for the method's budget.
                blocked += 1;
                continue;
            }
            break (reply, o);
        };
        let (total, next) = match o {
            Outcome::Ok { total, next, .. } => (total, next),
            Outcome::Error { code, description } => return Err(api(&method, &code, description)),
            _ => {
                return Err(api(
                    &method,
                    "NOT_EXECUTED",
                    "the first page did not run".into(),
                ));
            }
        };
        let items = extract_items(reply.take("p").unwrap_or_default());
        let short = items.len() < PAGE || next.is_none();
        let pages = match total {
            Some(t) if t > 0 => t.div_ceil(PAGE as u64),
            _ if short => 1,
            _ => u64::MAX / 2, // unknown: pages past the end come back empty
        };
        progress.started = true;
        progress.total = total;
        progress.pending = if short || pages <= 1 {
            Vec::new()
        } else {
            vec![(1, pages)]
        };
        progress.emitted += items.len() as u64;
        if tx
            .send(Ok(Page {
                items,
                progress: progress.clone(),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    // Several requests are in flight (each a chunk of pages), but pages are emitted in order,
    // so the checkpoint stays a single range `(emitted, end]`; a chunk that answers early waits
    // in `ready` for the ones before it (memory: at most `concurrency` chunks).
    let Some(&(first, mut end)) = progress.pending.first() else {
        return Ok(());
    };
    let concurrency = opts.concurrency.max(1);
    let mut emitted_to = first;
    let mut next_lo = first;
    // Remainders of chunks that were cut short (a block, commands the portal did not run):
    // sent before any new chunk, so the front of the list is never starved.
    let mut redo: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut ready: BTreeMap<u64, (u64, Vec<Value>)> = BTreeMap::new();
    let mut tasks: JoinSet<(u64, u64, Result<crate::Response, Error>)> = JoinSet::new();
    let mut stalls = 0u32;
    loop {
        while tasks.len() < concurrency {
            let (lo, last) = if let Some((lo, last)) = redo.pop_front() {
                // Cut to the room the budget allows now: a block may have taught a lower
                // limit than the one the chunk was sized for.
                let room = transport.room(&method, MAX_COMMANDS).await as u64;
                let cut = last.min(lo + room.max(1));
                if cut < last {
                    redo.push_front((cut, last));
                }
                (lo, cut)
            } else if next_lo < end {
                // No more pages to a request than the method's operating-time budget
                // comfortably allows: a counted page of a large table costs seconds
                // (docs/protocol.md §6).
                let room = transport.room(&method, MAX_COMMANDS).await as u64;
                let last = end.min(next_lo + room.max(1));
                let lo = next_lo;
                next_lo = last;
                (lo, last)
            } else {
                break;
            };
            if lo >= end {
                continue;
            }
            let cmd: Map<String, Value> = (lo + 1..=last)
                .map(|p| (format!("p{p}"), Value::String(page_cmd(p))))
                .collect();
            let t = transport.clone();
            tasks.spawn(async move { (lo, last, send_read(&t, cmd).await) });
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (lo, last, resp) = joined.map_err(|e| Error::state("export task failed", e))?;
        let resp = resp?;
        drop(resp.raw);
        let mut reply = Reply::from_result(resp.result);
        let mut items_out = Vec::new();
        let mut done_to = lo;
        for p in lo + 1..=last {
            let key = format!("p{p}");
            match reply.outcome_ref(&key) {
                OutcomeKind::Ok => {}
                // This page and the rest did not run: they go again (the patient send waits
                // until the method's budget has room).
                OutcomeKind::Error(code, _) if is_block(&code) => break,
                OutcomeKind::Error(code, description) => {
                    return Err(api(&method, &code, description));
                }
                OutcomeKind::Missing => break,
            }
            let next = reply.next.get(&key).and_then(lenient_u64);
            let items = extract_items(reply.take(&key).unwrap_or_default());
            let short = items.len() < PAGE || next.is_none();
            items_out.extend(items);
            done_to = p;
            if short {
                end = end.min(p);
                break;
            }
        }
        if done_to < last.min(end) {
            stalls = if done_to == lo { stalls + 1 } else { 0 };
            if stalls > BLOCKED_RESENDS {
                return Err(api(
                    &method,
                    "OPERATION_TIME_LIMIT",
                    format!(
                        "pages after {done_to} stayed blocked through {BLOCKED_RESENDS} waits for the budget"
                    ),
                ));
            }
            redo.push_back((done_to, last));
        } else {
            stalls = 0;
        }
        if done_to > lo {
            ready.insert(lo, (done_to, items_out));
        }
        // Emit every chunk that continues the emitted range.
        while let Some((to, items)) = ready.remove(&emitted_to) {
            if emitted_to >= end {
                break;
            }
            emitted_to = to.min(end);
            progress.emitted += items.len() as u64;
            progress.pending = if emitted_to >= end {
                Vec::new()
            } else {
                vec![(emitted_to, end)]
            };
            if tx
                .send(Ok(Page {
                    items,
                    progress: progress.clone(),
                }))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        if emitted_to >= end {
            return Ok(());
        }
    }
}
