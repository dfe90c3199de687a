//! `b24 describe`: one method from the catalog — scope, risk, how a write whose answer was
//! lost is settled, version, paging, idempotency, documentation link and the errors to
//! expect — and what it takes and returns (parameters, nested fields, allowed values, result
//! shape, examples) from the method knowledge. With a portal configured, a method with a
//! `*.fields` companion also shows the portal's live field list (custom `UF_*` fields
//! included), merged and marked by the library.

use b24_guard::gate::Origin;
use b24_guard::knowledge::{self, Knowledge};
use b24_guard::{Catalog, Risk};
use serde_json::json;

use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 describe crm.deal.list
  b24 describe crm.deal.add              # with a portal: its live fields, custom UF_* marked
  b24 describe crm.item.add --fields-params '{\"entityTypeId\":2}'
  b24 describe crm.deal.add --offline    # the documentation only")]
pub struct Args {
    /// Method name, e.g. `crm.deal.list`.
    pub method: String,
    /// Do not ask the portal for its live field list.
    #[arg(long)]
    pub offline: bool,
    /// Parameters for the `*.fields` companion when it needs some (`crm.item.fields` takes
    /// `entityTypeId`).
    #[arg(long, value_name = "JSON")]
    pub fields_params: Option<String>,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let cat = Catalog::builtin();
    let Some(m) = cat.get(&args.method) else {
        let mut close: Vec<String> = cat
            .suggest(&args.method, 5)
            .into_iter()
            .map(str::to_string)
            .collect();
        if close.is_empty() {
            close = cat
                .search(args.method.rsplit('.').nth(1), None, None)
                .iter()
                .take(8)
                .map(|m| m.name.clone())
                .collect();
        }
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "`{}` is not in the catalog of documented methods; did you mean: {} (search with `b24 methods --search`)",
                args.method,
                if close.is_empty() {
                    "nothing close".to_string()
                } else {
                    close.join(", ")
                }
            ),
        ));
    };
    let extra = match &args.fields_params {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Exit::new(exit::USAGE, format!("--fields-params: not valid JSON: {e}")))?,
        None => json!({}),
    };
    let mut errors = vec![
        json!({"code": "QUERY_LIMIT_EXCEEDED", "http": 503, "fix": "b24 retries automatically; lower concurrency"}),
        json!({"code": "OPERATION_TIME_LIMIT", "http": 429, "fix": "b24 waits until operating_reset_at; request fewer fields/pages"}),
        json!({"code": "insufficient_scope", "http": 403, "fix": format!("grant the `{}` scope to the webhook or app", m.scope)}),
        json!({"code": "NO_AUTH_FOUND", "http": 401, "fix": "check B24_WEBHOOK_URL / the token (`b24 doctor`)"}),
    ];
    if m.who_can_call
        .to_ascii_lowercase()
        .contains("administrator")
    {
        errors
            .push(json!({"code": "ACCESS_DENIED", "http": 403, "fix": "call as an administrator"}));
    }
    if m.name.starts_with("event.") {
        errors.push(json!({"code": "WRONG_AUTH_TYPE", "http": 403, "fix": "application (OAuth) context required; webhooks cannot call it"}));
    }
    if m.name.starts_with("crm.") {
        errors.push(json!({"code": "", "http": 400, "fix": "legacy CRM methods use an empty code with a description such as \"Not found\""}));
    }
    let confirm = match m.risk {
        Risk::Read => None,
        Risk::Destructive => Some("--confirm-destructive"),
        _ => Some("--confirm-write"),
    };
    let paging = if m.lists {
        json!({"pages_of": 50, "export": format!("b24 export {} (keyset by ID, 50 lists per batch, no counting)", m.name)})
    } else {
        json!(null)
    };
    // What b24 does when a write's answer is lost (`b24 settle`), beside its risk class.
    let settle = cat.settle_outline(&m.name);
    let doc = Knowledge::builtin().get(&m.name);
    let mut out = json!({
        "name": m.name,
        "scope": m.scope,
        "risk": m.risk,
        "needs": confirm,
        "settle": settle,
        "pack": m.pack,
        "api": m.api,
        "lists": m.lists,
        "paging": paging,
        "idempotent": m.idempotent,
        "deprecated": m.deprecated,
        "who_can_call": m.who_can_call,
        "doc": m.doc_url(),
        "parameters": doc.as_ref().map(|d| d.view()).unwrap_or(json!({"status": "undocumented"})),
        "common_errors": errors,
    });
    if let Some(d) = &doc
        && !args.offline
        && g.config().is_ok()
        && knowledge::companion(d, cat).is_some()
    {
        let live = match exec::gate(g, Origin::Cli) {
            Ok(gate) => match knowledge::fetch_live(&gate, d, extra).await {
                Ok(Some(r)) => serde_json::to_value(r)?,
                Ok(None) => {
                    json!({"skipped": "the fields method needs parameters; give them with --fields-params"})
                }
                Err(e) => json!({"error": gate.redact_text(&e.to_string())}),
            },
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        out["live_fields"] = live;
    }
    crate::outln!("{}", serde_json::to_string_pretty(&out)?)?;
    Ok(exit::OK)
}
