//! The keyset strategy: `filter >ID, <=ID` ranges ordered by ID, many ranges per batch and
//! several batches in flight, each range split by the density of IDs seen so far.

use super::*;

#[allow(clippy::too_many_arguments)] // a private helper; a struct would only rename them
pub(super) fn keyed_command(
    method: &str,
    base: &Map<String, Value>,
    filter: &Map<String, Value>,
    idf: &str,
    lo: Option<u64>,
    hi: Option<u64>,
    desc: bool,
    id_only: bool,
) -> String {
    let mut p = base.clone();
    let mut f = filter.clone();
    if let Some(lo) = lo {
        f.insert(format!(">{idf}"), json!(lo));
    }
    if let Some(hi) = hi {
        f.insert(format!("<={idf}"), json!(hi));
    }
    if !f.is_empty() {
        p.insert("filter".into(), Value::Object(f));
    }
    p.insert(
        "order".into(),
        json!({ idf: if desc { "DESC" } else { "ASC" } }),
    );
    p.insert("start".into(), json!(-1));
    if id_only {
        p.retain(|k, _| !k.eq_ignore_ascii_case("select"));
        p.insert("select".into(), json!([idf]));
    }
    format!("{method}?{}", query::encode(&Value::Object(p)))
}

/// Ask for the smallest and largest ID in one request. `Ok(None)` when the method cannot be
/// keyed (the commands fail, or items have no ID); `Ok(Some(None))` when the list is empty.
pub(super) async fn probe_keyset<T: Transport>(
    t: &T,
    opts: &ExportOptions,
) -> Result<Option<Option<(u64, u64)>>, Error> {
    let (base, filter) = base_params(&opts.params);
    let idf = id_field(&opts.method);
    let mut cmd = Map::new();
    cmd.insert(
        "lo".into(),
        Value::String(keyed_command(
            &opts.method,
            &base,
            &filter,
            idf,
            None,
            None,
            false,
            true,
        )),
    );
    cmd.insert(
        "hi".into(),
        Value::String(keyed_command(
            &opts.method,
            &base,
            &filter,
            idf,
            None,
            None,
            true,
            true,
        )),
    );
    let mut blocked = 0;
    let (mut reply, lo, hi) = loop {
        let resp = send_read(t, cmd.clone()).await?;
        let reply = Reply::from_result(resp.result);
        let (lo, hi) = (reply.outcome("lo"), reply.outcome("hi"));
        let is_blocked = |o: &Outcome| matches!(o, Outcome::Error { code, .. } if is_block(code));
        if (is_blocked(&lo) || is_blocked(&hi)) && blocked < BLOCKED_RESENDS {
            // The portal blocked the method: the next (patient) send waits for its budget.
            blocked += 1;
            continue;
        }
        break (reply, lo, hi);
    };
    if !lo.is_ok() || !hi.is_ok() {
        if opts.strategy == Strategy::Keyset
            && let Outcome::Error { code, description } = if lo.is_ok() { hi } else { lo }
        {
            return Err(api(&opts.method, &code, description));
        }
        return Ok(None);
    }
    let lo_items = extract_items(reply.take("lo").unwrap_or_default());
    let hi_items = extract_items(reply.take("hi").unwrap_or_default());
    let (Some(first), Some(last)) = (lo_items.first(), hi_items.first()) else {
        return Ok(Some(None));
    };
    match (id_of(first), id_of(last)) {
        // Ranges are `(lo, hi]`, so the smallest ID must be at least 1 to leave room for
        // `lo = min - 1`; a list that holds ID 0 is exported by offset instead.
        (Some(a), Some(b)) if a >= 1 && a <= b => Ok(Some(Some((a, b)))),
        _ => {
            if opts.strategy == Strategy::Keyset {
                return Err(Error::Config(format!(
                    "{} cannot be exported by ID (its items carry no usable ID); use --strategy offset",
                    opts.method
                )));
            }
            Ok(None)
        }
    }
}

/// Merge `(lo, hi]` ranges into a sorted, coalesced list.
pub(super) fn coalesce(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        if lo >= hi {
            continue;
        }
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

pub(super) async fn keyset<T: Transport + Clone + 'static>(
    transport: T,
    opts: ExportOptions,
    mut progress: Progress,
    probed: Option<Option<(u64, u64)>>,
    tx: &Tx,
) -> Result<(), Error> {
    let method = opts.method.clone();
    let (base, filter) = base_params(&opts.params);
    let idf = id_field(&method);
    if !progress.started {
        let span = match probed {
            Some(s) => Some(s),
            None => probe_keyset(&transport, &opts).await?,
        };
        match span {
            None => {
                return Err(Error::Config(format!(
                    "{method} cannot be exported by ID; use --strategy offset"
                )));
            }
            Some(None) => {}
            Some(Some((min, max))) => {
                progress.pending = vec![(min - 1, max)];
                progress.total = Some(max - min + 1);
            }
        }
        progress.started = true;
        // An empty list or the probe alone: tell the caller where we are.
        if progress.pending.is_empty() {
            let _ = tx
                .send(Ok(Page {
                    items: Vec::new(),
                    progress,
                }))
                .await;
            return Ok(());
        }
    }
    let mut free: BTreeMap<u64, u64> = progress.pending.iter().copied().collect();
    let mut inflight: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut next_id = 0u64;
    // Density (items per ID) observed so far; dense auto-increment IDs are the usual case.
    let (mut seen_items, mut seen_width) = (1.0f64, 1.0f64);
    let concurrency = opts.concurrency.max(1);
    let mut failures = 0u32;
    let mut blocked = 0u32;
    loop {
        while tasks.len() < concurrency && !free.is_empty() {
            // A request carries no more commands than the method's operating-time budget
            // comfortably allows (all 50 until the portal has reported a cost).
            let room = transport.room(&method, MAX_COMMANDS).await;
            let density = (seen_items / seen_width).clamp(1e-9, 1.0);
            let width = ((PAGE as f64 / density).floor() as u64).clamp(1, u64::MAX / 4);
            let mut ranges = Vec::with_capacity(room);
            while ranges.len() < room {
                let Some((lo, hi)) = free.pop_first() else {
                    break;
                };
                let end = hi.min(lo.saturating_add(width));
                ranges.push((lo, end));
                if end < hi {
                    free.insert(end, hi);
                }
            }
            let cmd: Map<String, Value> = ranges
                .iter()
                .enumerate()
                .map(|(i, (lo, hi))| {
                    (
                        format!("r{i}"),
                        Value::String(keyed_command(
                            &method,
                            &base,
                            &filter,
                            idf,
                            Some(*lo),
                            Some(*hi),
                            false,
                            false,
                        )),
                    )
                })
                .collect();
            let id = next_id;
            next_id += 1;
            inflight.insert(id, ranges.clone());
            let t = transport.clone();
            tasks.spawn(async move {
                let r = t.send_batch_patient(cmd, false, false).await;
                (id, ranges, r)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (id, ranges, result) = joined.map_err(|e| Error::state("export task failed", e))?;
        inflight.remove(&id);
        let resp = match result {
            Ok(r) => {
                failures = 0;
                r
            }
            // Lists are reads: a request that failed after the client's own retries is put
            // back as pending work a few more times before the export gives up.
            Err(e) if e.class() == crate::ErrorClass::Transient && failures < EXPORT_RETRIES => {
                failures += 1;
                tracing::warn!(error = %e, "export request failed; its ranges go back to the queue");
                for (lo, hi) in ranges {
                    free.insert(lo, hi);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        // The envelope as received is a second copy of every item: drop it now.
        drop(resp.raw);
        let mut reply = Reply::from_result(resp.result);
        let mut items_out = Vec::new();
        let mut any_blocked = false;
        for (i, (lo, hi)) in ranges.iter().copied().enumerate() {
            let key = format!("r{i}");
            match reply.outcome_ref(&key) {
                OutcomeKind::Ok => {}
                // Blocked commands did not run: their ranges go back to the queue, and the
                // next send waits until the method's budget has room again.
                OutcomeKind::Error(code, _) if is_block(&code) && blocked < BLOCKED_RESENDS => {
                    any_blocked = true;
                    free.insert(lo, hi);
                    continue;
                }
                OutcomeKind::Error(code, description) => {
                    return Err(api(&method, &code, description));
                }
                OutcomeKind::Missing => {
                    free.insert(lo, hi);
                    continue;
                }
            }
            let raw = extract_items(reply.take(&key).unwrap_or_default());
            let full = raw.len() >= PAGE;
            let mut got: Vec<(u64, Value)> = raw
                .into_iter()
                .filter_map(|it| id_of(&it).map(|i| (i, it)))
                .filter(|(i, _)| *i > lo && *i <= hi)
                .collect();
            got.sort_by_key(|(i, _)| *i);
            got.dedup_by_key(|(i, _)| *i);
            if full {
                let Some(&(last, _)) = got.last() else {
                    return Err(Error::Config(format!(
                        "{method} ignores the ID filter (a full page held no ID of its range); use --strategy offset"
                    )));
                };
                if last < hi {
                    free.insert(last, hi);
                }
                seen_width += (last - lo) as f64;
            } else {
                seen_width += (hi - lo) as f64;
            }
            seen_items += got.len() as f64;
            items_out.extend(got.into_iter().map(|(_, v)| v));
        }
        blocked = if any_blocked { blocked + 1 } else { 0 };
        progress.emitted += items_out.len() as u64;
        let mut pending: Vec<(u64, u64)> = free.iter().map(|(a, b)| (*a, *b)).collect();
        pending.extend(inflight.values().flatten().copied());
        progress.pending = coalesce(pending);
        if tx
            .send(Ok(Page {
                items: items_out,
                progress: progress.clone(),
            }))
            .await
            .is_err()
        {
            return Ok(()); // the consumer went away
        }
    }
    Ok(())
}

/// A finished request: its id, its ranges and the answer.
pub(super) type Done = (u64, Vec<(u64, u64)>, Result<crate::Response, Error>);
