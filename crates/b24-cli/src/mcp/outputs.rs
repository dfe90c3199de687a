//! The output schema of every tool: what its `structuredContent` holds.
//!
//! Written out rather than derived because the answers are built from the gate's JSON, and
//! because one schema must describe both a tool's answer and its `isError` result: some
//! clients validate `structuredContent` against `outputSchema` whether or not the result is an
//! error. So no field is required at the top level, every field either can carry is declared
//! with its type, and an absent field means "does not apply" (no answer carries `null` where a
//! type is declared; [`super::server::B24Mcp::ok`] drops top-level nulls). The MCP tests call
//! each tool and validate its answers against these, and check that no answer carries a field
//! that is not declared here.

use serde_json::{Map, Value, json};

fn string(d: &str) -> Value {
    json!({"type": "string", "description": d})
}
fn integer(d: &str) -> Value {
    json!({"type": "integer", "description": d})
}
fn number(d: &str) -> Value {
    json!({"type": "number", "description": d})
}
fn boolean(d: &str) -> Value {
    json!({"type": "boolean", "description": d})
}
fn object(d: &str) -> Value {
    json!({"type": "object", "description": d})
}
/// Any JSON value (a portal's result): no `type`, since a type array is not portable.
fn any(d: &str) -> Value {
    json!({"description": d})
}
fn array(items: Value, d: &str) -> Value {
    json!({"type": "array", "items": items, "description": d})
}
fn risk(d: &str) -> Value {
    json!({"type": "string", "enum": ["read", "write", "admin", "destructive"], "description": d})
}
fn record(props: Vec<(&str, Value)>, required: &[&str]) -> Value {
    let props: Map<String, Value> = props.into_iter().map(|(k, v)| (k.into(), v)).collect();
    json!({"type": "object", "properties": props, "required": required})
}

/// What an `isError` result carries (a refusal, a portal error, a failed check).
fn error_fields() -> Vec<(&'static str, Value)> {
    vec![
        (
            "error",
            string(
                "On isError results: the kind (refused, usage, auth, api, outcome_unknown, transient, invalid_arguments, not_found, paging, ...).",
            ),
        ),
        (
            "message",
            string("On isError results: what happened and how to fix it."),
        ),
        (
            "exit_code",
            integer("On isError results: the b24 CLI's exit code for the same failure."),
        ),
        (
            "detail",
            string("On isError results: the refusal without the general advice."),
        ),
        (
            "code",
            string("On Bitrix24 errors: the portal's error code."),
        ),
        (
            "description",
            string("On Bitrix24 errors: the portal's description."),
        ),
        (
            "http_status",
            integer("On Bitrix24 errors: the HTTP status."),
        ),
        (
            "meaning",
            string("On Bitrix24 errors: what the code means."),
        ),
        ("fix", string("On isError results: how to fix it.")),
        (
            "reason",
            string("On outcome_unknown errors: why the outcome is unknown."),
        ),
    ]
}

/// What a call answers under the operator's `--dry-run` (nothing is sent).
fn dry_run_fields() -> Vec<(&'static str, Value)> {
    vec![
        (
            "dry_run",
            boolean("Under the operator's --dry-run: true, and nothing was sent."),
        ),
        ("risk", risk("Under --dry-run: the method's risk class.")),
        ("api", string("Under --dry-run: v2 or v3.")),
        (
            "endpoint",
            string("Under --dry-run: where the call would go."),
        ),
        (
            "params",
            object("Under --dry-run: the params that would be sent (secrets redacted)."),
        ),
        (
            "needs",
            string("Under --dry-run: the confirmation the call needs."),
        ),
        ("sent", boolean("Under --dry-run: false.")),
        (
            "would_pass",
            boolean("Under --dry-run: whether the policy would let the call through."),
        ),
    ]
}

/// The top-level schema: the tool's own fields, then the dry-run and error fields it can carry.
fn tool_schema(own: Vec<(&'static str, Value)>, dry_run: bool) -> Value {
    let mut props = Map::new();
    let mut extra = error_fields();
    if dry_run {
        extra.extend(dry_run_fields());
    }
    for (k, v) in own.into_iter().chain(extra) {
        props.entry(k.to_string()).or_insert(v);
    }
    json!({"type": "object", "properties": props})
}

fn call_fields() -> Vec<(&'static str, Value)> {
    vec![
        ("method", string("The method called.")),
        ("result", any("The portal's `result`, as returned.")),
        (
            "total",
            integer("The portal's `total` for lists, when it reports one."),
        ),
        (
            "next",
            integer("The `start` of the next page, when more pages follow."),
        ),
        (
            "replayed",
            boolean(
                "True when an idempotency key returned the first answer instead of writing again.",
            ),
        ),
    ]
}

fn apply_fields() -> Vec<(&'static str, Value)> {
    vec![
        ("plan_id", string("The plan applied.")),
        ("method", string("The plan's method.")),
        ("applied", boolean("True: the plan ran.")),
        ("result", any("The portal's `result`.")),
        (
            "replayed",
            boolean("True when the plan had already run and its first answer is returned."),
        ),
        (
            "plan_state",
            string("When a refusal left the plan open: what to do."),
        ),
    ]
}

fn method_summary() -> Value {
    record(
        vec![
            ("name", string("Method name.")),
            ("scope", string("The REST scope it needs.")),
            ("risk", risk("Risk class.")),
            ("pack", string("Capability pack.")),
            ("api", string("REST version(s).")),
            ("lists", boolean("Whether it returns pages.")),
            ("deprecated", boolean("Deprecated by Bitrix24.")),
            ("doc", string("Documentation link (empty when none).")),
        ],
        &["name", "scope", "risk", "pack", "lists"],
    )
}

fn batch_line() -> Value {
    record(
        vec![
            ("key", string("The command's key.")),
            (
                "status",
                json!({"type": "string", "enum": ["ok", "error", "not_executed", "unknown"], "description": "What happened to it."}),
            ),
            ("result", any("Its result (status ok).")),
            ("total", integer("Its `total` (lists).")),
            ("next", integer("Its next page's `start`.")),
            (
                "error",
                record(
                    vec![
                        ("code", string("Bitrix24 error code.")),
                        ("description", string("The portal's description.")),
                        ("fix", string("How to fix it.")),
                    ],
                    &["code"],
                ),
            ),
            (
                "reason",
                string("Why it was not executed, or why its outcome is unknown."),
            ),
            ("fix", string("What to do about an unknown outcome.")),
        ],
        &["key", "status"],
    )
}

/// The output schema of a tool, or None for a tool this module does not know.
pub fn for_tool(name: &str) -> Option<Value> {
    Some(match name {
        "b24_read" => tool_schema(call_fields(), true),
        "b24_write" => {
            let mut f = call_fields();
            f.extend(apply_fields());
            tool_schema(f, true)
        }
        "b24_apply" => tool_schema(apply_fields(), true),
        "b24_plan" => tool_schema(
            vec![
                (
                    "plan_id",
                    string("The plan's id (`pl_...`), for b24_apply."),
                ),
                ("method", string("The planned method.")),
                ("params", object("The planned params (secrets redacted).")),
                ("api", string("v2 or v3.")),
                ("risk", risk("The method's risk class.")),
                (
                    "hash",
                    string("Hash of method and params: apply runs exactly this."),
                ),
                ("created_at", integer("Unix time the plan was recorded.")),
                (
                    "expires_at",
                    integer("Unix time after which it can no longer be applied."),
                ),
                ("sent", boolean("False: planning sends nothing.")),
                ("next", string("What to do next.")),
            ],
            false,
        ),
        "b24_batch" => tool_schema(
            vec![
                ("commands", integer("Commands in the batch.")),
                ("ok", integer("Commands that succeeded.")),
                // A count on a finished batch; on an isError refusal, the error kind (a
                // string), so it has no single type.
                (
                    "error",
                    any(
                        "Commands that failed (a number); on a refusal, the error kind (a string).",
                    ),
                ),
                (
                    "not_executed",
                    integer("Commands not executed (after a halt, or refused)."),
                ),
                ("unknown", integer("Commands whose outcome is unknown.")),
                (
                    "results",
                    array(batch_line(), "One outcome per command, in order."),
                ),
                (
                    "dry_run",
                    array(
                        object("A command as it would be sent."),
                        "Under the operator's --dry-run: the commands, nothing sent.",
                    ),
                ),
            ],
            false,
        ),
        "b24_export" => tool_schema(
            vec![
                ("method", string("The list method.")),
                ("count", integer("Items returned in this answer.")),
                ("items", array(object("A record."), "The items, in order.")),
                ("more", boolean("Whether more items remain.")),
                (
                    "cursor",
                    string(
                        "Pass it back as `cursor` to continue after the last item (present when more remain, or after an error).",
                    ),
                ),
                (
                    "total",
                    integer("The portal's total count, when it reports one (keyset pages do not)."),
                ),
                (
                    "items_before_error",
                    integer("On errors: items fetched before it."),
                ),
            ],
            true,
        ),
        "b24_describe" => tool_schema(
            vec![
                ("name", string("Method name.")),
                ("scope", string("The REST scope it needs.")),
                ("risk", risk("Risk class.")),
                ("tool", string("The tool to call it with.")),
                (
                    "needs",
                    string("The confirmation it needs (absent for reads)."),
                ),
                (
                    "settle",
                    object(
                        "How a write whose answer was lost is settled: resent, looked up by its stamp, or not at all.",
                    ),
                ),
                ("pack", string("Capability pack.")),
                ("api", string("REST version(s).")),
                ("lists", boolean("Whether it returns pages.")),
                ("paging", object("How to page it (lists only).")),
                ("idempotent", boolean("Whether repeating it is harmless.")),
                ("deprecated", boolean("Deprecated by Bitrix24.")),
                ("who_can_call", string("Who may call it.")),
                ("doc", string("Documentation link.")),
                (
                    "parameters",
                    object("Documented parameters, result fields and examples."),
                ),
                (
                    "common_errors",
                    array(
                        record(
                            vec![
                                ("code", string("Error code.")),
                                ("http", integer("HTTP status.")),
                                ("fix", string("How to fix it.")),
                            ],
                            &["code", "fix"],
                        ),
                        "Errors to expect, with their fixes.",
                    ),
                ),
                (
                    "live_fields",
                    object(
                        "With live: true, the portal's field list merged with the documented one.",
                    ),
                ),
                (
                    "similar",
                    array(
                        json!({"type": "string"}),
                        "When the method is unknown: similar names.",
                    ),
                ),
            ],
            false,
        ),
        "b24_search_methods" => tool_schema(
            vec![
                ("matches", integer("Methods that match.")),
                ("returned", integer("Methods returned (at most `limit`).")),
                ("methods", array(method_summary(), "The methods.")),
            ],
            false,
        ),
        "b24_queue_status" => tool_schema(
            vec![
                ("store", string("The queue store (a path, or postgres).")),
                ("backend", string("sqlite or postgres.")),
                ("exists", boolean("Whether the store exists yet.")),
                ("ready", integer("Events waiting.")),
                ("running", integer("Events being handled.")),
                ("processed", integer("Events handled.")),
                ("dead", integer("Events in the dead-letter queue.")),
                ("dlq", integer("Same as dead.")),
                (
                    "oldest_age_secs",
                    number("Age of the oldest waiting event, in seconds."),
                ),
                ("note", string("When the store does not exist yet: why.")),
                (
                    "dlq_hint",
                    string("When events are dead: how to inspect and replay them."),
                ),
            ],
            false,
        ),
        _ => return None,
    })
}
