//! The offset strategy: `start=N` pages in order, for lists without a usable ID order.

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
    // Pages are emitted in order (one request at a time) so the checkpoint stays a single range.
    let mut blocked = 0u32;
    loop {
        let Some(&(lo, hi)) = progress.pending.first() else {
            return Ok(());
        };
        // No more pages to a request than the method's operating-time budget comfortably
        // allows: a counted page of a large table costs seconds (reference §6).
        let room = transport.room(&method, MAX_COMMANDS).await as u64;
        let last = hi.min(lo + room);
        let cmd: Map<String, Value> = (lo + 1..=last)
            .map(|p| (format!("p{p}"), Value::String(page_cmd(p))))
            .collect();
        let resp = send_read(&transport, cmd).await?;
        let mut reply = Reply::from_result(resp.result);
        let mut items_out = Vec::new();
        let mut end = hi;
        let mut done_to = lo;
        let mut hit_block = false;
        for p in lo + 1..=last {
            let key = format!("p{p}");
            match reply.outcome_ref(&key) {
                OutcomeKind::Ok => {}
                // This page and the rest did not run: emit what did, send the rest again
                // (the patient send waits until the method's budget has room).
                OutcomeKind::Error(code, _) if is_block(&code) && blocked < BLOCKED_RESENDS => {
                    hit_block = true;
                    break;
                }
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
                end = p;
                break;
            }
        }
        blocked = if hit_block { blocked + 1 } else { 0 };
        progress.emitted += items_out.len() as u64;
        progress.pending = if done_to >= end {
            Vec::new()
        } else {
            vec![(done_to, end)]
        };
        if tx
            .send(Ok(Page {
                items: items_out,
                progress: progress.clone(),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
