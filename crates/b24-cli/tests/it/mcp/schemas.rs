//! The tools' schemas as a client sees them: every inputSchema and outputSchema is a valid
//! JSON Schema draft 2020-12 document (checked against the meta-schema), stays in the portable
//! subset strict clients accept, and the structuredContent of real calls — answers and isError
//! results — validates against its tool's outputSchema.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use std::collections::HashMap;

use super::*;

/// Where `schema` leaves the portable subset (see `src/mcp/schema.rs`): type arrays, `$ref` /
/// `$defs`, `format`, `anyOf`/`oneOf`, `nullable`, boolean property or item schemas.
fn portability_problems(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Value::Object(o) = schema else {
        out.push(format!("{at}: a boolean schema ({schema})"));
        return;
    };
    for bad in [
        "$ref",
        "$defs",
        "definitions",
        "format",
        "anyOf",
        "oneOf",
        "nullable",
    ] {
        if o.contains_key(bad) {
            out.push(format!("{at}: `{bad}`"));
        }
    }
    if let Some(t) = o.get("type")
        && !t.is_string()
    {
        out.push(format!("{at}: type {t} is not a single string"));
    }
    if let Some(Value::Object(props)) = o.get("properties") {
        for (k, p) in props {
            portability_problems(p, &format!("{at}.{k}"), out);
        }
    }
    if let Some(items) = o.get("items") {
        portability_problems(items, &format!("{at}[]"), out);
    }
    if let Some(extra @ Value::Object(_)) = o.get("additionalProperties") {
        portability_problems(extra, &format!("{at}{{*}}"), out);
    }
}

fn problems(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    portability_problems(schema, "$", &mut out);
    out
}

/// Each tool's (input, output) schema, as listed.
async fn schemas(client: &Client) -> HashMap<String, (Value, Value)> {
    let tools = client.list_all_tools().await.expect("tools/list");
    tools
        .into_iter()
        .map(|t| {
            let input = Value::Object((*t.input_schema).clone());
            let output = t
                .output_schema
                .map(|s| Value::Object((*s).clone()))
                .unwrap_or(Value::Null);
            (t.name.to_string(), (input, output))
        })
        .collect()
}

#[test]
fn the_portability_check_catches_what_strict_clients_reject() {
    let bad = json!({
        "type": "object",
        "properties": {
            "a": {"type": ["string", "null"]},
            "b": {"$ref": "#/$defs/B"},
            "c": {"type": "integer", "format": "uint32"},
            "d": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "e": true,
            "f": {"type": "array", "items": {"type": "number", "format": "double"}},
        },
        "$defs": {"B": {"type": "string"}},
    });
    let p = problems(&bad);
    assert_eq!(p.len(), 7, "{p:#?}");
    assert!(
        problems(&json!({"type": "object", "properties": {"x": {"type": "string"}}})).is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tool_schema_is_draft_2020_12_and_portable() {
    let env = Env::bare();
    let client = connect(&env).await;
    let all = schemas(&client).await;
    assert_eq!(all.len(), 9, "{:?}", all.keys());
    for (name, (input, output)) in &all {
        for (kind, s) in [("inputSchema", input), ("outputSchema", output)] {
            assert_eq!(s["type"], "object", "{name} {kind}: {s}");
            if let Err(e) = jsonschema::draft202012::meta::validate(s) {
                panic!("{name} {kind} is not a draft 2020-12 schema: {e}\n{s}");
            }
            jsonschema::draft202012::new(s)
                .unwrap_or_else(|e| panic!("{name} {kind} does not compile: {e}"));
            let p = problems(s);
            assert!(p.is_empty(), "{name} {kind} is not portable: {p:#?}\n{s}");
        }
        // Inputs: every field described, nothing unknown accepted.
        assert_eq!(input["additionalProperties"], json!(false), "{name}");
        let fields = input["properties"].as_object().cloned().unwrap_or_default();
        for (field, p) in &fields {
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}.{field} has no description"
            );
        }
    }
    // The nested types are inlined, not referenced.
    let batch = &all["b24_batch"].0;
    assert_eq!(batch["properties"]["commands"]["items"]["type"], "object");
    assert_eq!(
        batch["properties"]["commands"]["items"]["required"],
        json!(["method"])
    );
    let search = &all["b24_search_methods"].0;
    assert_eq!(
        search["properties"]["risk"]["enum"],
        json!(["read", "write", "admin", "destructive"])
    );
    assert_eq!(search["properties"]["limit"]["type"], "integer");
    assert_eq!(
        all["b24_describe"].0["properties"]["fields_params"]["type"],
        "object"
    );
    client.cancel().await.ok();
}

/// Validates answers against the listed output schemas, and checks each answer declares no
/// field the schema does not (the schema documents every field a client can get).
struct Outputs(HashMap<String, (jsonschema::Validator, Value)>);

impl Outputs {
    async fn of(client: &Client) -> Outputs {
        let all = schemas(client).await;
        Outputs(
            all.into_iter()
                .map(|(n, (_, out))| {
                    let v = jsonschema::draft202012::new(&out).expect("compiles");
                    (n, (v, out))
                })
                .collect(),
        )
    }

    /// Check one result; returns its structured content.
    fn check(&self, tool: &str, r: &CallToolResult) -> Value {
        let v = structured(r);
        assert!(v.is_object(), "{tool}: no structuredContent: {}", text(r));
        let (validator, schema) = &self.0[tool];
        let errors: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{tool} (isError: {}) does not match its outputSchema: {errors:#?}\n{v}",
            is_error(r)
        );
        let declared = schema["properties"].as_object().unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(
                declared.contains_key(k),
                "{tool}: `{k}` is not in its outputSchema: {v}"
            );
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn structured_results_match_their_output_schemas() {
    let sb = sandbox_with_leads(60).await;
    let env = Env::webhook(&sb);
    let client = connect(&env).await;
    let out = Outputs::of(&client).await;
    let mut checked = std::collections::BTreeSet::new();
    let mut run = async |tool: &str, args: Value, want_error: bool| -> Value {
        let r = call(&client, tool, args.clone()).await;
        assert_eq!(is_error(&r), want_error, "{tool} {args}: {}", text(&r));
        checked.insert(tool.to_string());
        out.check(tool, &r)
    };

    // Reads: a list page, a portal error, a refused write.
    let v = run("b24_read", json!({"method": "crm.lead.list"}), false).await;
    assert_eq!(v["total"], 60, "{v}");
    assert_eq!(v["next"], 50, "{v}");
    run(
        "b24_read",
        json!({"method": "crm.lead.get", "params": {"id": 987654}}),
        true,
    )
    .await;
    run("b24_read", json!({"method": "crm.lead.add"}), true).await;
    // Arguments that do not match the input schema.
    run(
        "b24_read",
        json!({"method": "crm.lead.list", "bogus": 1}),
        true,
    )
    .await;

    // Exports: with more to come (a cursor), then the rest (no cursor, no nulls).
    let v = run(
        "b24_export",
        json!({"method": "crm.lead.list", "max_items": 10}),
        false,
    )
    .await;
    assert!(v["cursor"].is_string() && v["more"] == true, "{v}");
    let v = run(
        "b24_export",
        json!({"method": "crm.lead.list", "max_items": 100, "cursor": v["cursor"]}),
        false,
    )
    .await;
    assert_eq!(
        (v["count"].clone(), v["more"].clone()),
        (json!(50), json!(false))
    );
    assert!(v.get("cursor").is_none(), "{v}");
    run(
        "b24_export",
        json!({"method": "user.get", "max_items": 5}),
        false,
    )
    .await;
    run("b24_export", json!({"method": "crm.lead.add"}), true).await;

    // The catalog.
    run("b24_describe", json!({"method": "crm.lead.list"}), false).await;
    let v = run("b24_describe", json!({"method": "crm.lead.delete"}), false).await;
    assert_eq!(v["needs"], "confirm_destructive: true");
    run("b24_describe", json!({"method": "user.current"}), false).await;
    run("b24_describe", json!({"method": "crm.nope.zap"}), true).await;
    run(
        "b24_search_methods",
        json!({"query": "crm.deal", "limit": 3}),
        false,
    )
    .await;
    run(
        "b24_search_methods",
        json!({"pack": "comms", "risk": "write"}),
        false,
    )
    .await;
    run("b24_queue_status", json!({}), false).await;

    // Writes: planned and applied, confirmed with a key (then replayed), refused.
    let add = json!({"fields": {"TITLE": "Schema"}});
    let v = run(
        "b24_plan",
        json!({"method": "crm.lead.add", "params": add}),
        false,
    )
    .await;
    let plan_id = v["plan_id"].as_str().unwrap().to_string();
    run("b24_apply", json!({"plan_id": plan_id}), false).await;
    run("b24_apply", json!({"plan_id": "pl_nope"}), true).await;
    run(
        "b24_plan",
        json!({"method": "crm.lead.delete", "params": {"id": 1}}),
        false,
    )
    .await;
    let w = json!({"method": "crm.lead.add", "params": add, "confirm": true, "idempotency_key": "schema-1"});
    run("b24_write", w.clone(), false).await;
    let v = run("b24_write", w, false).await;
    assert_eq!(v["replayed"], true);
    run(
        "b24_write",
        json!({"method": "crm.lead.add", "params": add}),
        true,
    )
    .await;
    let v = run(
        "b24_plan",
        json!({"method": "crm.lead.add", "params": add}),
        false,
    )
    .await;
    run(
        "b24_write",
        json!({"method": "crm.lead.add", "params": add, "plan_id": v["plan_id"]}),
        false,
    )
    .await;

    // Batches: reads, a failing command beside a good one, a refused destructive command.
    run(
        "b24_batch",
        json!({"commands": [{"key": "me", "method": "user.current"}, {"key": "l", "method": "crm.lead.list"}]}),
        false,
    )
    .await;
    let v = run(
        "b24_batch",
        json!({"commands": [{"key": "ok", "method": "crm.lead.get", "params": {"id": 1}},
                            {"key": "gone", "method": "crm.lead.get", "params": {"id": 987654}}]}),
        false,
    )
    .await;
    assert_eq!(
        (v["ok"].clone(), v["error"].clone()),
        (json!(1), json!(1)),
        "{v}"
    );
    run(
        "b24_batch",
        json!({"commands": [{"method": "crm.lead.delete", "params": {"id": 2}}], "confirm": true}),
        true,
    )
    .await;
    let every: Vec<&String> = out.0.keys().collect();
    assert_eq!(
        checked.len(),
        out.0.len(),
        "untested: {every:?} vs {checked:?}"
    );
    client.cancel().await.ok();
    sb.shutdown().await;
}
