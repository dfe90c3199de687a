//! Batch: chunking, references (client-side across requests, failures never sent as literals),
//! halt, partial failures, and retries of reads only. Against a scripted transport and against
//! the sandbox.

use std::sync::{Arc, Mutex};

use b24::batch::{Batch, Outcome, Transport};
use b24::{Client, Config, Error, Response};
use serde_json::{Map, Value, json};

pub async fn sandbox(
    leads: usize,
    faults: &str,
) -> (b24_sandbox::Sandbox, Client, tempfile::TempDir) {
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig {
        seed_leads: leads,
        faults: faults.parse().unwrap(),
        seed: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = sb.info().clone();
    let get = move |k: &str| -> Option<String> {
        match k {
            "B24_AUTH_MODE" => Some("oauth".into()),
            "B24_DOMAIN" => Some(info.base_url.clone()),
            "B24_CLIENT_ID" => Some(info.client_id.clone()),
            "B24_CLIENT_SECRET" => Some(info.client_secret.clone()),
            "B24_ACCESS_TOKEN" => Some(info.access_token.clone()),
            "B24_REFRESH_TOKEN" => Some(info.refresh_token.clone()),
            "B24_OAUTH_TOKEN_URL" => Some(info.oauth_token_url.clone()),
            _ => None,
        }
    };
    let cfg = Config::from_lookup(&get, dir.path().to_path_buf()).unwrap();
    let client = Client::new(cfg).await.unwrap();
    (sb, client, dir)
}

/// A scripted portal: runs each command through `f(method_and_query) -> Ok(result) | Err(code)`,
/// honours halt and substitutes nothing (so a literal reference would be visible).
#[derive(Clone)]
struct Script {
    sent: Arc<Mutex<Vec<Vec<(String, String)>>>>,
    fail_request: Arc<Mutex<Vec<bool>>>,
    f: Arc<dyn Fn(&str) -> Result<Value, String> + Send + Sync>,
}

impl Script {
    fn new(f: impl Fn(&str) -> Result<Value, String> + Send + Sync + 'static) -> Script {
        Script {
            sent: Default::default(),
            fail_request: Default::default(),
            f: Arc::new(f),
        }
    }
    fn sent(&self) -> Vec<Vec<(String, String)>> {
        self.sent.lock().unwrap().clone()
    }
}

impl Transport for Script {
    fn send_batch(
        &self,
        cmd: Map<String, Value>,
        halt: bool,
        is_write: bool,
    ) -> impl std::future::Future<Output = Result<Response, Error>> + Send {
        let this = self.clone();
        async move {
            this.sent.lock().unwrap().push(
                cmd.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
            );
            let fail = {
                let mut f = this.fail_request.lock().unwrap();
                if f.is_empty() { false } else { f.remove(0) }
            };
            if fail {
                return Err(if is_write {
                    Error::OutcomeUnknown {
                        method: "batch".into(),
                        reason: "timed out".into(),
                        idempotency_key: None,
                        source: None,
                    }
                } else {
                    Error::Transient {
                        method: "batch".into(),
                        reason: "timed out".into(),
                        attempts: 5,
                        source: None,
                    }
                });
            }
            let (mut result, mut errors) = (Map::new(), Map::new());
            for (k, v) in &cmd {
                match (this.f)(v.as_str().unwrap()) {
                    Ok(r) => {
                        result.insert(k.clone(), r);
                    }
                    Err(code) => {
                        errors.insert(
                            k.clone(),
                            json!({"error": code, "error_description": "scripted"}),
                        );
                        if halt {
                            break;
                        }
                    }
                }
            }
            let result = json!({"result": result, "result_error": if errors.is_empty() { json!([]) } else { Value::Object(errors) }, "result_total": [], "result_next": []});
            Ok(Response::from_result(result))
        }
    }
}

#[tokio::test]
async fn chunks_of_fifty_and_cross_chunk_references_are_substituted_client_side() {
    let s = Script::new(|c| {
        if let Some(id) = c.strip_prefix("m.get?id=") {
            Ok(json!({"ID": id, "NAME": format!("n{id}")}))
        } else {
            Ok(json!(c))
        }
    });
    let mut b = Batch::new();
    for i in 0..120 {
        b.add(&format!("k{i}"), "m.get", json!({"id": i})).unwrap();
    }
    // k120 references k0 (two requests earlier): substituted before sending.
    b.add(
        "k120",
        "m.update",
        json!({"id": "$result[k0][ID]", "fields": {"NAME": "$result[k1][NAME] & co"}}),
    )
    .unwrap();
    let out = b.run(&s).await;
    let sent = s.sent();
    assert_eq!(
        sent.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 21]
    );
    assert_eq!(out.len(), 121);
    assert!(out.iter().all(|(_, o)| o.is_ok()));
    let last = &sent[2].last().unwrap().1;
    assert_eq!(last, "m.update?id=0&fields[NAME]=n1%20%26%20co");
}

#[tokio::test]
async fn reference_to_failed_command_is_never_sent() {
    let s = Script::new(|c| {
        if c.starts_with("bad.get") {
            Err("NOT_FOUND".into())
        } else {
            Ok(json!({"ID": "5"}))
        }
    });
    let mut b = Batch::new();
    b.add("bad", "bad.get", json!({"id": 1})).unwrap();
    b.add("ok", "good.get", json!({})).unwrap();
    // A write referencing a command of the same request waits for the next request...
    b.add("w", "crm.lead.update", json!({"id": "$result[bad][ID]"}))
        .unwrap();
    // ...and a read may share it; its answer is discarded.
    b.add("r", "crm.lead.get", json!({"id": "$result[bad][ID]"}))
        .unwrap();
    b.add("w2", "crm.lead.update", json!({"id": "$result[ok][ID]"}))
        .unwrap();
    let out: std::collections::HashMap<_, _> = b.run(&s).await.into_iter().collect();
    assert!(matches!(&out["bad"], Outcome::Error { code, .. } if code == "NOT_FOUND"));
    assert!(out["ok"].is_ok(), "successes are kept");
    for k in ["w", "r"] {
        assert!(
            matches!(&out[k], Outcome::Error { code, description } if code == "REFERENCE_FAILED" && description.contains("failed command bad")),
            "{k}: {:?}",
            out[k]
        );
    }
    assert!(out["w2"].is_ok());
    let all: Vec<String> = s.sent().into_iter().flatten().map(|(_, c)| c).collect();
    assert!(
        !all.iter()
            .any(|c| c.starts_with("crm.lead.update") && c.contains("$result")),
        "{all:?}"
    );
    assert!(all.contains(&"crm.lead.update?id=5".to_string()));
}

#[tokio::test]
async fn halt_stops_at_the_first_failure() {
    let s = Script::new(|c| {
        if c.starts_with("x.fail") {
            Err("E".into())
        } else {
            Ok(json!(1))
        }
    });
    let mut b = Batch::new();
    b.halt(true);
    for i in 0..60 {
        b.add(
            &format!("a{i}"),
            if i == 10 { "x.fail" } else { "x.get" },
            json!({}),
        )
        .unwrap();
    }
    let out = b.run(&s).await;
    assert_eq!(s.sent().len(), 1, "the second request is never sent");
    assert!(out[..10].iter().all(|(_, o)| o.is_ok()));
    assert!(matches!(out[10].1, Outcome::Error { .. }));
    assert!(
        out[11..]
            .iter()
            .all(|(_, o)| matches!(o, Outcome::NotExecuted { .. }))
    );
}

#[tokio::test]
async fn unknown_outcome_resends_reads_only() {
    let s = Script::new(|_| Ok(json!(true)));
    s.fail_request.lock().unwrap().push(true);
    let mut b = Batch::new();
    b.add("r1", "crm.lead.get", json!({"id": 1})).unwrap();
    b.add("w1", "crm.lead.add", json!({"fields": {"TITLE": "x"}}))
        .unwrap();
    b.add("r2", "crm.lead.list", json!({})).unwrap();
    let out: std::collections::HashMap<_, _> = b.run(&s).await.into_iter().collect();
    assert!(matches!(out["w1"], Outcome::Unknown { .. }));
    assert!(out["r1"].is_ok() && out["r2"].is_ok());
    let sent = s.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["r1", "r2"]
    );
}

#[tokio::test]
async fn against_the_sandbox_partial_failures_keep_successes() {
    let (sb, client, _d) = sandbox(5, "").await;
    let mut b = Batch::new();
    for i in 0..75 {
        b.add(
            &format!("add{i}"),
            "crm.lead.add",
            json!({"fields": {"TITLE": format!("Lead {i} & Co = 100%")}}),
        )
        .unwrap();
    }
    b.add("missing", "crm.lead.get", json!({"id": 999999}))
        .unwrap();
    b.add(
        "upd",
        "crm.lead.update",
        json!({"id": "$result[missing][ID]", "fields": {"TITLE": "never"}}),
    )
    .unwrap();
    b.add("get0", "crm.lead.get", json!({"id": "$result[add0]"}))
        .unwrap();
    b.add("get74", "crm.lead.get", json!({"id": "$result[add74]"}))
        .unwrap();
    let out: std::collections::HashMap<_, _> = b.run(&client).await.into_iter().collect();
    assert_eq!(out.values().filter(|o| o.is_ok()).count(), 77, "{out:?}");
    assert!(matches!(&out["missing"], Outcome::Error { .. }));
    assert!(matches!(&out["upd"], Outcome::Error { code, .. } if code == "REFERENCE_FAILED"));
    let Outcome::Ok { result, .. } = &out["get0"] else {
        panic!()
    };
    assert_eq!(result["TITLE"], "Lead 0 & Co = 100%");
    let Outcome::Ok { result, .. } = &out["get74"] else {
        panic!()
    };
    assert_eq!(result["TITLE"], "Lead 74 & Co = 100%");
    let st = sb.stats();
    assert_eq!(
        st.methods.get("crm.lead.update").copied().unwrap_or(0),
        0,
        "no update reached the portal"
    );
    assert_eq!(
        st.methods.get("batch").copied(),
        Some(3),
        "a write waits one request for its reference"
    );
}
