//! The tools' argument types. Each tool's input schema is derived from its type (`///` docs on
//! the fields become the descriptions), and `check_arguments` in [`super::server`] parses the
//! same types before routing, so the schema and the check cannot drift apart.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

// Optional fields are declared with their inner type in the schema (`#[schemars(with = ...)]`):
// absent is how a client leaves them out, and a `["T", "null"]` type is not portable to clients
// that map tool schemas onto a single-type dialect (the MCP Inspector's --strict flags it).

/// A JSON object of REST parameters.
pub type Params = Map<String, Value>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// REST method, e.g. `crm.lead.list`, `crm.deal.get`, `user.current`. Only read-only
    /// methods are accepted here.
    pub method: String,
    /// Method parameters, e.g. {"filter": {"STATUS_ID": "NEW"}, "select": ["ID", "TITLE"]}.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: Option<Params>,
    /// Call REST 3.0 (`/rest/api/`) instead of the classic REST v2.
    #[serde(default)]
    pub v3: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// REST method, e.g. `crm.lead.add`, `crm.deal.update`, `crm.lead.delete`.
    pub method: String,
    /// Method parameters, e.g. {"fields": {"TITLE": "New lead"}}.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: Option<Params>,
    /// Call REST 3.0 (`/rest/api/`) instead of the classic REST v2.
    #[serde(default)]
    pub v3: bool,
    /// Confirm a write (add/update/...). Required unless `plan_id` names a recorded plan.
    #[serde(default)]
    pub confirm: bool,
    /// Confirm a destructive call (delete, ...). Required for destructive methods.
    #[serde(default)]
    pub confirm_destructive: bool,
    /// Apply this plan from b24_plan instead (it must be for the same method and params).
    #[serde(default)]
    #[schemars(with = "String")]
    pub plan_id: Option<String>,
    /// A key that makes the write happen at most once: repeating the call with the same key
    /// returns the first answer instead of writing again.
    #[serde(default)]
    #[schemars(with = "String")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanArgs {
    /// REST method to plan, e.g. `crm.deal.update`.
    pub method: String,
    /// Method parameters, exactly as they will be sent.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: Option<Params>,
    /// Plan a REST 3.0 call.
    #[serde(default)]
    pub v3: bool,
    /// Seconds the plan stays valid (default 900, at most 86400).
    #[serde(default)]
    #[schemars(with = "u64")]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyArgs {
    /// The plan id returned by b24_plan (`pl_...`).
    pub plan_id: String,
    /// Confirm a destructive plan (delete, ...). Not needed for other writes: applying a
    /// recorded plan by its id is the confirmation.
    #[serde(default)]
    pub confirm_destructive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCommand {
    /// Name for this command's result, used in `$result[key]` references (default: its position).
    #[serde(default)]
    #[schemars(with = "String")]
    pub key: Option<String>,
    /// REST method, e.g. `crm.lead.get`.
    pub method: String,
    /// Method parameters; may refer to earlier results, e.g. `{"id": "$result[first][ID]"}`.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: Option<Params>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchArgs {
    /// The commands, run in order, 50 per request.
    pub commands: Vec<BatchCommand>,
    /// Stop at the first failing command; later ones are not executed.
    #[serde(default)]
    pub halt: bool,
    /// Confirm the writes among the commands.
    #[serde(default)]
    pub confirm: bool,
    /// Confirm the destructive commands among them.
    #[serde(default)]
    pub confirm_destructive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    /// A read-only list method, e.g. `crm.lead.list`, `crm.deal.list`, `user.get`.
    pub method: String,
    /// List parameters (`filter`, `select`, ...); paging params are set by b24.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: Option<Params>,
    /// Most items to return in this call (default 200, at most 5000).
    #[serde(default)]
    #[schemars(with = "u32")]
    pub max_items: Option<u32>,
    /// The `cursor` from the previous answer, to continue after its last item.
    #[serde(default)]
    #[schemars(with = "String")]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// Method name, e.g. `crm.deal.list`.
    pub method: String,
    /// Also ask the portal for the method's live field list (its `*.fields` companion, e.g.
    /// `crm.deal.fields`), merged with the documented fields and marked documented / live /
    /// custom (`UF_*`). A guarded read.
    #[serde(default)]
    pub live: bool,
    /// Parameters for the `*.fields` companion when it needs some, e.g. {"entityTypeId": 2}
    /// for `crm.item.fields`.
    #[serde(default)]
    pub fields_params: Option<Params>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RiskArg {
    Read,
    Write,
    Admin,
    Destructive,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Substring of the method name, or a scope (e.g. `deal`, `crm`, `task`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub query: Option<String>,
    /// Only this capability pack (core, comms, automation, collab, content, boards, commerce, ...).
    #[serde(default)]
    #[schemars(with = "String")]
    pub pack: Option<String>,
    /// Only this risk class.
    #[serde(default)]
    #[schemars(with = "RiskArg")]
    pub risk: Option<RiskArg>,
    /// Most methods to return (default 50, at most 500).
    #[serde(default)]
    #[schemars(with = "u32")]
    pub limit: Option<u32>,
}

/// b24_queue_status takes no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueArgs {}
