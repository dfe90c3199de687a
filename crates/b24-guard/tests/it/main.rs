//! The guard crate's one integration-test binary: attacks on the audit log, plans,
//! idempotency records and the write budget, each asserting the attack is caught or refused.

mod audit_attacks;
mod audit_repair;
mod bench;
mod gate;
mod hostile_round;
mod knowledge;
mod mcp_tokens;
mod pg_budget;
mod plan_settle;
mod policy_links;
mod redact_fleet;
mod redact_refresh;
mod settle;
mod store_attacks;

use serde_json::{Map, Value, json};

/// A record's fields as the gate would pass them.
pub fn fields(method: &str, extra: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("method".into(), json!(method));
    m.insert("decision".into(), json!("allow"));
    if let Value::Object(o) = extra {
        m.extend(o);
    }
    m
}
