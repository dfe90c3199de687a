//! `--limit N` for `b24 export` and `b24 list`: page with `start` and stop early.

use serde_json::Value;

use super::Target;
use super::checkpoint::open_out;
use crate::exit::{self, Exit};
use crate::globals::Globals;
use crate::render::Records;

/// `--limit N`: page with `start` in the caller's order (so `order: {ID: DESC}` gives the
/// newest) and stop as soon as N items are in: ⌈N/50⌉ requests at most.
pub async fn fetch_limited(
    method: &str,
    mut params: Value,
    start: i64,
    limit: u64,
    g: &Globals,
) -> anyhow::Result<(Vec<Value>, Option<u64>, Option<i64>)> {
    use b24_guard::gate::{CallOutcome, CallRequest, NoPerson, Origin};
    let gate = crate::exec::gate(g, Origin::Cli)?;
    let mut items: Vec<Value> = Vec::new();
    let mut total = None;
    let mut offset = start;
    let mut more = false;
    while (items.len() as u64) < limit {
        if let Some(o) = params.as_object_mut() {
            o.insert("start".into(), offset.into());
        }
        let req = CallRequest {
            method: method.to_string(),
            params: params.clone(),
            ..Default::default()
        };
        let response = match gate
            .call(req, &NoPerson)
            .await
            .map_err(crate::exec::gate_error)?
        {
            CallOutcome::Done { response, .. } => response,
            CallOutcome::DryRun(_) => break,
        };
        if total.is_none() {
            total = response.total;
        }
        let page = b24::export::extract_items(response.result);
        let got = page.len() as i64;
        let want = (limit - items.len() as u64) as usize;
        more = page.len() > want || response.next.is_some();
        items.extend(page.into_iter().take(want));
        match response.next {
            Some(n) if got > 0 && n as i64 > offset => offset = n as i64,
            _ => break,
        }
    }
    let next = more.then_some(start + items.len() as i64);
    Ok((items, total, next))
}

pub(super) async fn limited(
    method: &str,
    params: Value,
    n: u64,
    target: Target,
    g: &Globals,
) -> anyhow::Result<i32> {
    if params.as_object().is_none() {
        return Err(Exit::new(
            exit::USAGE,
            "--params must be a JSON object for --limit",
        ));
    }
    let (items, _, _) = fetch_limited(method, params, 0, n, g).await?;
    write_all(&items, target)
}

/// Write a finished set of records to `--out` or stdout.
pub fn write_all(items: &[Value], target: Target) -> anyhow::Result<i32> {
    match &target.file {
        None => crate::render::print(target.format, target.hint, items)?,
        Some(path) => {
            let f = open_out(path, None)?;
            let mut r = Records::new(
                std::io::BufWriter::new(f),
                target.format,
                false,
                target.hint.clone(),
            );
            for it in items {
                r.push(it)?;
            }
            r.finish()
                .map_err(|e| Exit::new(exit::INTERNAL, format!("--out {}: {e}", path.display())))?;
        }
    }
    Ok(exit::OK)
}
