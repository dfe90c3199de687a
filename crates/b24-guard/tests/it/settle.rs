//! Writes that settle (issue 21), through the gate against the sandbox with the fault that
//! runs a write and then loses its answer (`lose_after_write`). Every case asserts from the
//! sandbox's data — its records and its request log — that the write took effect exactly once
//! (or, where nothing may be guessed, that nothing was resent), not from what the gate says.

use std::sync::Arc;

use b24_guard::audit::Filter;
use b24_guard::gate::{
    ApplyRequest, BatchCommandSpec, BatchRequest, BatchRun, CallOutcome, CallRequest, Gate,
    GateError, NoPerson, Origin, PlanRequest, PortalSlot,
};
use b24_guard::policy::AgentPolicy;
use b24_guard::sources::{CallerInputs, OperatorPaths, resolve};
use b24_sandbox::{FaultSpec, Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub(crate) struct Fixture {
    sb: Sandbox,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let sb = b24_sandbox::start(SandboxConfig {
            seed_leads: 5,
            ..Default::default()
        })
        .await
        .expect("sandbox starts");
        Fixture {
            sb,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh gate (as a new `b24` process would build it) over the same records.
    pub(crate) fn gate(&self) -> Gate {
        self.gate_with(AgentPolicy {
            allow: vec!["*".into()],
            allow_unlisted: true,
            ..Default::default()
        })
    }

    /// The same, under the caller's policy flags `flags`.
    pub(crate) fn gate_with(&self, flags: AgentPolicy) -> Gate {
        let d = self.dir.path();
        let paths = OperatorPaths {
            system: d.join("etc/b24/policy.toml"),
            user: Some(d.join("home/.config/b24/policy.toml")),
            user_state: Some(d.join("home/.local/state/b24")),
        };
        let caller = CallerInputs {
            flags,
            ..Default::default()
        };
        let state = d.join("caller");
        let resolved = resolve(&paths, &caller, &state).expect("policy resolves");
        let url = self.sb.info().webhook_url.clone();
        let cfg = b24::Config::from_lookup(
            &|k: &str| (k == "B24_WEBHOOK_URL").then(|| url.clone()),
            state.join("client"),
        )
        .expect("config");
        let slot = PortalSlot::new(Ok(cfg), Arc::new(tokio::sync::OnceCell::new()));
        Gate::new(resolved, slot, Origin::Cli)
    }

    pub(crate) fn lose(&self, n: u32) {
        self.sb.set_faults(FaultSpec {
            lose_after_write: n,
            ..Default::default()
        });
    }

    /// How many requests for `method` the portal received.
    pub(crate) fn requests(&self, method: &str) -> usize {
        self.sb
            .request_log()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// Read the portal's data (reads are never hit by the counted faults).
    pub(crate) async fn read(&self, method: &str, params: Value, v3: bool) -> Value {
        let c = self.gate().client().await.unwrap();
        let r = if v3 {
            c.call_v3(method, params, Default::default()).await
        } else {
            c.call_with(method, params, Default::default()).await
        };
        r.expect("read").result
    }

    pub(crate) async fn leads_where(&self, filter: Value) -> Vec<Value> {
        let v = self
            .read(
                "crm.lead.list",
                json!({"filter": filter, "select": ["ID", "TITLE", "ORIGIN_ID"]}),
                false,
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn tasks(&self) -> Vec<Value> {
        let v = self
            .read(
                "tasks.task.list",
                json!({"select": ["id", "title"], "pagination": {"limit": 1000}}),
                true,
            )
            .await;
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

pub(crate) fn write(method: &str, params: Value) -> CallRequest {
    CallRequest {
        method: method.into(),
        params,
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    }
}

fn v3(method: &str, params: Value) -> CallRequest {
    CallRequest {
        api: b24_guard::gate::Api::V3,
        ..write(method, params)
    }
}

fn unknown(r: &Result<CallOutcome, GateError>) -> bool {
    matches!(r, Err(GateError::Client(b24::Error::OutcomeUnknown { .. })))
}

fn result(r: Result<CallOutcome, GateError>) -> Value {
    match r {
        Ok(CallOutcome::Done { response, .. }) => response.result,
        other => panic!("not done: {other:?}"),
    }
}

/// The call ids of writes the log lists as outcome-unknown.
fn unknown_ids(g: &Gate) -> Vec<String> {
    g.audit_log()
        .records(&Filter::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r["decision"] == "allow" && r["outcome"] == "unknown")
        .filter_map(|r| r["call_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_add_is_replayed_under_the_recorded_key_and_exists_once() {
    let f = Fixture::new().await;
    let before = f.tasks().await.len();
    f.lose(1);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "settle v3"}})),
            &NoPerson,
        )
        .await;
    // Sent (the portal replayed it), not answered from b24's own record.
    assert!(
        matches!(&r, Ok(CallOutcome::Done { replayed: false, response }) if response.replayed),
        "{r:?}"
    );
    let got = result(r);
    let tasks = f.tasks().await;
    assert_eq!(tasks.len(), before + 1, "exactly one task: {tasks:?}");
    assert_eq!(got["item"]["id"], tasks.last().unwrap()["id"]);
    // Sent twice: the lost first answer, then the portal's replay (it did not run again).
    assert_eq!(f.requests("tasks.task.add"), 2);
    // The key was recorded before sending and is in the intent record.
    let g = f.gate();
    let recs = g.audit_log().records(&Filter::default(), 100).unwrap();
    let intent = recs.iter().find(|r| r["outcome"] == "sending").unwrap();
    assert!(
        intent["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("b24-")
    );
    assert_eq!(intent["settle"], "replay");
    let s = recs.iter().find(|r| r["decision"] == "settle").unwrap();
    assert_eq!(s["outcome"], "settled");
    assert_eq!(s["evidence"]["replayed"], true, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_update_and_delete_are_resent_and_take_effect_once() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 2, "fields": {"TITLE": "settled title"}}),
            ),
            &NoPerson,
        )
        .await;
    assert_eq!(result(r), json!(true));
    assert_eq!(
        f.leads_where(json!({"ID": 2})).await[0]["TITLE"],
        "settled title"
    );
    assert_eq!(f.requests("crm.lead.update"), 2, "sent, then resent once");

    f.lose(1);
    let r = f
        .gate()
        .call(write("crm.lead.delete", json!({"id": 3})), &NoPerson)
        .await;
    assert_eq!(result(r), json!(true));
    assert!(f.leads_where(json!({"ID": 3})).await.is_empty(), "gone");
    let log = f.sb.request_log();
    let deletes: Vec<u16> = log
        .iter()
        .filter(|l| l.method == "crm.lead.delete")
        .map(|l| l.status)
        .collect();
    // The first ran (its answer lost); the resend found nothing left to delete.
    assert_eq!(deletes, vec![200, 400]);
    assert_eq!(f.leads_where(json!({})).await.len(), 4, "one lead fewer");
}

#[tokio::test(flavor = "multi_thread")]
async fn stamped_add_is_found_by_its_stamp_and_not_added_twice() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write("crm.lead.add", json!({"fields": {"TITLE": "stamped"}})),
            &NoPerson,
        )
        .await;
    let id = result(r);
    let found = f.leads_where(json!({"TITLE": "stamped"})).await;
    assert_eq!(found.len(), 1, "exactly one lead: {found:?}");
    assert_eq!(found[0]["ID"].as_str().unwrap(), id.to_string());
    assert!(found[0]["ORIGIN_ID"].as_str().unwrap().starts_with("b24-"));
    assert_eq!(f.requests("crm.lead.add"), 1, "never resent");
    assert_eq!(
        f.requests("crm.lead.list"),
        2,
        "the look-up (and our check)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unstampable_add_stays_unknown_and_is_not_resent() {
    let f = Fixture::new().await;
    f.lose(1);
    // The caller's own ORIGIN_ID: b24 does not stamp it nor trust it to be unique.
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.add",
                json!({"fields": {"TITLE": "mine", "ORIGIN_ID": "ext-1"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    assert_eq!(f.requests("crm.lead.add"), 1, "not resent");
    assert_eq!(f.leads_where(json!({"TITLE": "mine"})).await.len(), 1);
    // Recorded with what b24 knows; `settle` cannot do more and leaves it unknown.
    let g = f.gate();
    let ids = unknown_ids(&g);
    assert_eq!(ids.len(), 1);
    // Left out of a general run (nothing b24 can do about it); examined when named.
    assert!(g.settle(None).await.unwrap().is_empty());
    let reports = g.settle(Some(&ids[0])).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, "unknown");
    assert_eq!(f.requests("crm.lead.add"), 1, "still not resent");
}

#[tokio::test(flavor = "multi_thread")]
async fn settle_later_resolves_a_record_an_earlier_run_left_unknown() {
    let f = Fixture::new().await;
    let before = f.tasks().await.len();
    // The first answer and both resends are lost: the run ends outcome-unknown.
    f.lose(3);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "later"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    let Err(GateError::Client(e)) = &r else {
        unreachable!()
    };
    let g = f.gate();
    let ids = unknown_ids(&g);
    assert!(e.to_string().contains(&ids[0]), "names its call id: {e}");
    assert_eq!(f.tasks().await.len(), before + 1, "it did run, once");
    // Later, a new process settles it from the audit log.
    let reports = f.gate().settle(Some(&ids[0])).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(reports[0].evidence["replayed"], true);
    assert_eq!(f.tasks().await.len(), before + 1, "still exactly one");
    assert_eq!(f.requests("tasks.task.add"), 4);
    // Settled means settled: nothing is left to do, and nothing more is sent.
    assert!(f.gate().settle(None).await.unwrap().is_empty());
    assert_eq!(f.requests("tasks.task.add"), 4);
    let v = f.gate().audit_log().verify().unwrap();
    assert!(v.is_ok(), "the chain holds the settlement records: {v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_commands_settle_one_by_one() {
    let f = Fixture::new().await;
    f.lose(1);
    let cmd = |key: &str, method: &str, params: Value| BatchCommandSpec::Params {
        key: key.into(),
        method: method.into(),
        params,
    };
    let req = BatchRequest {
        commands: vec![
            cmd(
                "a",
                "crm.lead.add",
                json!({"fields": {"TITLE": "batch add"}}),
            ),
            cmd(
                "u",
                "crm.lead.update",
                json!({"id": 1, "fields": {"TITLE": "batch upd"}}),
            ),
            cmd("d", "crm.lead.delete", json!({"id": 4})),
            cmd(
                "x",
                "crm.lead.add",
                json!({"fields": {"TITLE": "batch own", "ORIGIN_ID": "e"}}),
            ),
        ],
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    };
    let run = f.gate().batch(req, &NoPerson).await.unwrap();
    let BatchRun::Done { results, .. } = run else {
        panic!("not run")
    };
    let status: Vec<(&str, &str)> = results
        .iter()
        .map(|(k, o)| (k.as_str(), o.status()))
        .collect();
    assert_eq!(
        status,
        vec![("a", "ok"), ("u", "ok"), ("d", "ok"), ("x", "unknown")]
    );
    // From the portal's data: each command took effect once.
    assert_eq!(f.leads_where(json!({"TITLE": "batch add"})).await.len(), 1);
    assert_eq!(f.leads_where(json!({"TITLE": "batch own"})).await.len(), 1);
    assert_eq!(
        f.leads_where(json!({"ID": 1})).await[0]["TITLE"],
        "batch upd"
    );
    assert!(f.leads_where(json!({"ID": 4})).await.is_empty());
    assert_eq!(f.requests("batch"), 1, "the batch was not resent whole");
    assert_eq!(f.requests("crm.lead.add"), 0, "no add resent on its own");
    assert_eq!(f.requests("crm.lead.update"), 1);
    assert_eq!(f.requests("crm.lead.delete"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_that_finds_two_records_settles_nothing() {
    let f = Fixture::new().await;
    let params = json!({"fields": {"TITLE": "twin"}});
    let key = "caller-key-1";
    // Someone else wrote this add's stamp into two leads already.
    let stamp = b24_guard::settle::stamp_for(key, "crm.lead.add", &params);
    let c = f.gate().client().await.unwrap();
    for t in ["twin a", "twin b"] {
        c.call_with(
            "crm.lead.add",
            json!({"fields": {"TITLE": t, "ORIGIN_ID": stamp}}),
            Default::default(),
        )
        .await
        .unwrap();
    }
    f.sb.reset_stats();
    f.lose(1);
    let mut req = write("crm.lead.add", params);
    req.idempotency_key = Some(key.into());
    let r = f.gate().call(req, &NoPerson).await;
    assert!(unknown(&r), "must not guess: {r:?}");
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    let with_stamp = f.leads_where(json!({"ORIGIN_ID": stamp})).await;
    assert_eq!(with_stamp.len(), 3);
    let g = f.gate();
    let s = g
        .audit_log()
        .records(&Filter::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .find(|r| r["decision"] == "settle")
        .unwrap();
    assert_eq!(s["outcome"], "unknown");
    assert_eq!(s["evidence"]["found"].as_array().unwrap().len(), 3, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_collisions_are_refused_not_answered() {
    let f = Fixture::new().await;
    let mut a = write("crm.lead.add", json!({"fields": {"TITLE": "k1 a"}}));
    a.idempotency_key = Some("k1".into());
    f.lose(1);
    result(f.gate().call(a.clone(), &NoPerson).await);
    // The same key for a different call: refused, nothing sent.
    let mut b = write("crm.lead.add", json!({"fields": {"TITLE": "k1 b"}}));
    b.idempotency_key = Some("k1".into());
    let e = f.gate().call(b, &NoPerson).await.unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    // The same call again: the recorded (settled) result, nothing sent.
    let again = f.gate().call(a, &NoPerson).await.unwrap();
    assert!(matches!(again, CallOutcome::Done { replayed: true, .. }));
    assert_eq!(f.requests("crm.lead.add"), 1);
    assert!(f.leads_where(json!({"TITLE": "k1 b"})).await.is_empty());
    assert_eq!(f.leads_where(json!({"TITLE": "k1 a"})).await.len(), 1);
    // REST 3.0: the same key with another body is the portal's 422, not a replay.
    let c = f.gate().client().await.unwrap();
    let opts = || b24::CallOptions::write(true).with_idempotency_key("k2");
    c.call_v3(
        "tasks.task.add",
        json!({"fields": {"title": "one"}}),
        opts(),
    )
    .await
    .unwrap();
    let n = f.tasks().await.len();
    let e = c
        .call_v3(
            "tasks.task.add",
            json!({"fields": {"title": "two"}}),
            opts(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("IDEMPOTENCYKEYREUSED"), "{e}");
    assert_eq!(f.tasks().await.len(), n);
}

/// Leave a v3 add outcome-unknown (every answer lost); its call id.
async fn leave_unknown(f: &Fixture) -> String {
    f.lose(3);
    let r = f
        .gate()
        .call(
            v3("tasks.task.add", json!({"fields": {"title": "forged?"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    unknown_ids(&f.gate()).pop().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_or_edited_settle_records_are_refused() {
    // A settlement record written without the guard key.
    let f = Fixture::new().await;
    let id = leave_unknown(&f).await;
    let g = f.gate();
    let path = g.audit_log().path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let forged = json!({"v": 2, "seq": last["seq"].as_u64().unwrap() + 1, "ts": last["ts"],
        "portal": last["portal"], "method": "tasks.task.add", "decision": "settle", "settles": id,
        "outcome": "settled", "prev": last["mac"], "mac": "0".repeat(64)});
    std::fs::write(&path, format!("{text}{forged}\n")).unwrap();
    let sent = f.requests("tasks.task.add");
    let e = f.gate().settle(None).await.unwrap_err();
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(f.requests("tasks.task.add"), sent, "nothing resent");

    // An edited record: the unknown write's class changed so that it would be resent.
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.add",
                json!({"fields": {"TITLE": "own", "ORIGIN_ID": "x"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r));
    let path = f.gate().audit_log().path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"settle\":\"unknown\"", "\"settle\":\"resend\"");
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let e = f.gate().settle(None).await.unwrap_err();
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(f.requests("crm.lead.add"), 1, "nothing resent");
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_store_params_are_not_resent() {
    let f = Fixture::new().await;
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 1, "fields": {"TITLE": "meant"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let g = f.gate();
    let db = g.guard_dir().join("guard.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n = conn
        .execute(
            "UPDATE idempotency_params SET params = replace(params, 'meant', 'evil')",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    let sent = f.requests("crm.lead.update");
    let reports = g.settle(None).await.unwrap();
    assert_eq!(reports[0].status, "unknown", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), sent, "nothing resent");
    assert!(f.leads_where(json!({"TITLE": "evil"})).await.is_empty());
}

#[test]
fn done_keys_b24_made_are_pruned_after_a_week_and_callers_keys_are_kept() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    let p = json!({"id": 1});
    for k in ["b24-old", "mine-old", "b24-open"] {
        s.begin(k, "crm.lead.update", &p).unwrap();
    }
    s.key_done("b24-old", &json!({"result": true})).unwrap();
    s.key_done("mine-old", &json!({"result": true})).unwrap();
    s.key_unknown("b24-open").unwrap();
    let conn = rusqlite::Connection::open(d.path().join("guard.db")).unwrap();
    conn.execute(
        "UPDATE idempotency SET updated_at = updated_at - 8 * 86400",
        [],
    )
    .unwrap();
    drop(conn);
    s.begin("b24-new", "crm.lead.update", &p).unwrap();
    assert!(s.key_record("b24-old").unwrap().is_none(), "pruned");
    let kept = |k: &str| matches!(s.key_record(k).unwrap(), Some(Ok(_)));
    assert!(kept("mine-old"), "a caller's key is theirs to keep");
    assert!(kept("b24-open"), "an unknown outcome is kept until settled");
    assert!(kept("b24-new"));
    let conn = rusqlite::Connection::open(d.path().join("guard.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM idempotency_params WHERE key = 'b24-old'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "its params went with it");
}

#[test]
fn one_write_is_settled_by_one_process_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    s.begin("b24-k", "crm.lead.add", &json!({"fields": {}}))
        .unwrap();
    assert!(
        !s.claim_for_settling("b24-k", 900.0).unwrap(),
        "still being sent"
    );
    s.key_unknown("b24-k").unwrap();
    assert!(s.claim_for_settling("b24-k", 900.0).unwrap());
    assert!(
        !s.claim_for_settling("b24-k", 900.0).unwrap(),
        "a second settler waits"
    );
    // A settle that died long ago gives the key back.
    assert!(s.claim_for_settling("b24-k", -1.0).unwrap());
    // The claim keeps the row's integrity tag valid.
    assert!(matches!(s.key_record("b24-k").unwrap(), Some(Ok(_))));
    s.key_done("b24-k", &json!({"result": 1})).unwrap();
    assert!(
        !s.claim_for_settling("b24-k", -1.0).unwrap(),
        "done is done"
    );
    assert!(!s.claim_for_settling("nope", 900.0).unwrap());
}

/// A batch's keys are recorded in one transaction and finished in another, not one each.
#[test]
fn a_batchs_keys_take_two_transactions() {
    let d = tempfile::tempdir().unwrap();
    let s = b24_guard::store::GuardStore::open_for_portal(d.path(), "p").unwrap();
    let params: Vec<Value> = (0..50).map(|i| json!({"fields": {"TITLE": i}})).collect();
    let keys: Vec<String> = (0..50).map(|i| format!("b24-{i}")).collect();
    let meta = json!({"api": "v2", "class": "stamp"});
    let rows: Vec<(&str, &str, &Value, &Value)> = keys
        .iter()
        .zip(&params)
        .map(|(k, p)| (k.as_str(), "crm.lead.add", p, &meta))
        .collect();
    let t = std::time::Instant::now();
    s.begin_many(&rows).unwrap();
    let results: Vec<Value> = (0..50).map(|i| json!({"result": i})).collect();
    let done: Vec<(&str, Option<&Value>)> = keys
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, (k, r))| (k.as_str(), (i % 2 == 0).then_some(r)))
        .collect();
    s.finish_many(&done).unwrap();
    eprintln!("50 keys recorded and finished in {:?}", t.elapsed());
    // Done keys answer with their result; failed ones are freed; the meta is kept.
    let Some(Ok(r)) = s.key_record("b24-0").unwrap() else {
        panic!("kept")
    };
    assert_eq!(
        (r.state.as_str(), r.result),
        ("done", Some(json!({"result": 0})))
    );
    assert_eq!(r.meta, meta);
    assert!(s.key_record("b24-1").unwrap().is_none(), "failed: freed");
    // A key that exists already is not taken over.
    assert!(s.begin_many(&rows[..1]).is_err());
}

/// A process that ends while a write is out leaves its intent and no outcome. `settle` takes
/// such writes once they are old enough (an hour by default: until then they may still be on
/// their way), and settles them the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_process_died_mid_call_is_settled_later() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        hold_after_write: 1,
        ..Default::default()
    });
    let gate = f.gate();
    let task = tokio::spawn(async move {
        gate.call(
            write("crm.lead.add", json!({"fields": {"TITLE": "died"}})),
            &NoPerson,
        )
        .await
    });
    // The portal ran the add and holds its answer; the process "dies" meanwhile.
    for _ in 0..200 {
        if f.requests("crm.lead.add") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(f.requests("crm.lead.add"), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(f.leads_where(json!({"TITLE": "died"})).await.len(), 1);
    let g = f.gate();
    assert!(unknown_ids(&g).is_empty(), "no outcome was recorded");
    // Too recent for the default: it may still be on its way. Nothing is sent.
    assert!(g.settle(None).await.unwrap().is_empty());
    let lists = f.requests("crm.lead.list");
    let reports = g.settle_with(None, 0.0).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(reports[0].evidence["no_outcome_recorded"], true);
    assert_eq!(reports[0].evidence["adds_resent"], 0, "found by its stamp");
    assert_eq!(f.requests("crm.lead.list"), lists + 1, "one look-up");
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    assert_eq!(f.leads_where(json!({"TITLE": "died"})).await.len(), 1);
    assert!(
        g.settle_with(None, 0.0).await.unwrap().is_empty(),
        "settled once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crm_item_add_is_stamped_in_origin_id_and_found() {
    let f = Fixture::new().await;
    f.lose(1);
    let r = f
        .gate()
        .call(
            write(
                "crm.item.add",
                json!({"entityTypeId": 2, "fields": {"title": "item stamped"}}),
            ),
            &NoPerson,
        )
        .await;
    let got = result(r);
    let deals = f
        .read(
            "crm.deal.list",
            json!({"filter": {"TITLE": "item stamped"}, "select": ["ID", "ORIGIN_ID"]}),
            false,
        )
        .await;
    let deals = deals.as_array().unwrap();
    assert_eq!(deals.len(), 1, "exactly one deal: {deals:?}");
    assert!(deals[0]["ORIGIN_ID"].as_str().unwrap().starts_with("b24-"));
    assert_eq!(
        got["item"]["id"].to_string(),
        deals[0]["ID"].as_str().unwrap()
    );
    assert_eq!(f.requests("crm.item.add"), 1, "never resent");
    assert_eq!(f.requests("crm.item.list"), 1, "found by its stamp");
}

/// Hostile: a `method?query` batch command in PHP bracket form (`fields[TITLE]=…`) whose
/// answer is lost. The portal read the query as nested `fields`; a resend must mean the same
/// thing or not happen — b24 resends params as JSON, where `fields[TITLE]` is a literal key
/// the portal ignores, so the resend would be another call (an update of nothing, reported as
/// the command's outcome). And `fields[PHONE][0][VALUE]` appends a number on every run.
#[tokio::test(flavor = "multi_thread")]
async fn bracket_query_commands_are_not_resent_as_other_calls() {
    let f = Fixture::new().await;
    f.lose(1);
    let text = |key: &str, t: &str| BatchCommandSpec::Text {
        key: key.into(),
        text: t.into(),
    };
    let req = BatchRequest {
        commands: vec![
            text("u", "crm.lead.update?id=2&fields[TITLE]=text%20upd"),
            text("p", "crm.lead.update?id=3&fields[PHONE][0][VALUE]=%2B100"),
        ],
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    };
    let run = f.gate().batch(req, &NoPerson).await.unwrap();
    let BatchRun::Done { results, .. } = run else {
        panic!("not run")
    };
    // The portal's data: both commands ran once (the fault ran the batch, then lost it).
    assert_eq!(
        f.leads_where(json!({"ID": 2})).await[0]["TITLE"],
        "text upd"
    );
    let phones = f
        .read("crm.lead.get", json!({"id": 3}), false)
        .await
        .get("PHONE")
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    assert_eq!(phones, 1, "one number added, not two");
    // Nothing was sent again in a shape the portal reads differently.
    assert_eq!(
        f.requests("crm.lead.update"),
        0,
        "a bracket-form command was resent as JSON: {results:?}"
    );
    for (k, o) in &results {
        assert_ne!(
            o.status(),
            "error",
            "{k}: the update ran; b24 must not call it failed"
        );
    }
}

/// Hostile: a delete by a code (`bizproc.robot.delete CODE`) whose process died mid-call,
/// settled later. Codes are given out again (the app registers its robot anew), so resending
/// it after the fact would delete whatever carries the code now; only deletes by a numeric ID
/// are resent. Asserted from the request log: the settle sends nothing; the control delete by
/// ID is resent and the lead is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_by_code_is_not_resent_later() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        latency: Some((
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(3),
        )),
        ..Default::default()
    });
    for (m, p) in [
        ("bizproc.robot.delete", json!({"CODE": "robot"})),
        ("crm.lead.delete", json!({"id": 5})),
    ] {
        let gate = f.gate();
        let task = tokio::spawn(async move { gate.call(write(m, p), &NoPerson).await });
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        task.abort();
        let _ = task.await;
    }
    f.sb.set_faults(FaultSpec::default());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let robots = f.requests("bizproc.robot.delete");
    let leads = f.requests("crm.lead.delete");
    let reports = f.gate().settle_with(None, 0.0).await.unwrap();
    assert_eq!(
        f.requests("bizproc.robot.delete"),
        robots,
        "a delete by code was resent: {reports:?}"
    );
    assert_eq!(f.requests("crm.lead.delete"), leads + 1, "{reports:?}");
    assert!(f.leads_where(json!({"ID": 5})).await.is_empty());
    let robot = f
        .gate()
        .settle_with(None, 0.0)
        .await
        .unwrap()
        .into_iter()
        .chain(reports)
        .find(|r| r.method == "bizproc.robot.delete");
    if let Some(r) = robot {
        assert_eq!(r.status, "unknown", "{r:?}");
    }
}

/// Hostile: settling under a policy that does not allow what settling sends. The stamp
/// look-up is a read of its own (`crm.lead.list`): a deny list naming it must hold for the
/// look-up as for any call; and a later `b24 settle` under a policy that now denies the write,
/// or is read-only, must resend nothing. Asserted from the sandbox's request log and data.
#[tokio::test(flavor = "multi_thread")]
async fn settling_obeys_the_policy_for_every_request_it_sends() {
    let f = Fixture::new().await;
    let deny = |d: &[&str]| AgentPolicy {
        allow: vec!["*".into()],
        allow_unlisted: true,
        deny: d.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    f.lose(1);
    let r = f
        .gate_with(deny(&["crm.lead.list"]))
        .call(
            write("crm.lead.add", json!({"fields": {"TITLE": "no lookup"}})),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    assert_eq!(
        f.requests("crm.lead.list"),
        0,
        "the denied look-up was sent"
    );
    assert_eq!(f.requests("crm.lead.add"), 1, "not added again");
    assert_eq!(f.leads_where(json!({"TITLE": "no lookup"})).await.len(), 1);

    // An update whose every answer is lost, settled later under a deny list / read-only.
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 2, "fields": {"TITLE": "upd"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let sent = f.requests("crm.lead.update");
    assert_eq!(sent, 3);
    let denied = f
        .gate_with(deny(&["crm.lead.update"]))
        .settle(None)
        .await
        .unwrap();
    let ro = f
        .gate_with(AgentPolicy {
            read_only: true,
            ..deny(&[])
        })
        .settle(None)
        .await
        .unwrap();
    assert_eq!(f.requests("crm.lead.update"), sent, "{denied:?} {ro:?}");
    let upd: Vec<_> = denied
        .iter()
        .chain(&ro)
        .filter(|r| r.method == "crm.lead.update")
        .collect();
    assert_eq!(upd.len(), 2, "{denied:?} {ro:?}");
    assert!(upd.iter().all(|r| r.status == "unknown"), "{upd:?}");
    // The add, settled once its look-up is allowed: found by its stamp, not added again.
    assert_eq!(f.requests("crm.lead.add"), 1);
    assert_eq!(f.leads_where(json!({"TITLE": "no lookup"})).await.len(), 1);
}

/// Hostile: `b24 settle` while the process that sent a batch is alive and still waiting for
/// it. A long batch (many chunks paced by operating-time blocks) can be out longer than the
/// hour after which a write with an intent and no outcome counts as its process having died;
/// here the hour is 3 s and the portal holds the batch for 6 s. The settle must not take the
/// batch's keys from the live process — before, it looked the stamp up (nothing yet), added the
/// lead itself, and then the batch added it too: two leads with one stamp.
#[tokio::test(flavor = "multi_thread")]
async fn settle_does_not_take_a_batch_its_live_process_is_still_sending() {
    let f = Fixture::new().await;
    f.sb.set_faults(FaultSpec {
        latency: Some((
            std::time::Duration::from_secs(6),
            std::time::Duration::from_secs(6),
        )),
        ..Default::default()
    });
    let gate = f.gate();
    let batch = tokio::spawn(async move {
        // 50 reads fill the first chunk; the add goes in the second, sent when the first
        // one's answer is in.
        let mut commands: Vec<BatchCommandSpec> = (0..50)
            .map(|i| BatchCommandSpec::Params {
                key: format!("r{i}"),
                method: "crm.lead.get".into(),
                params: json!({"id": 1}),
            })
            .collect();
        commands.push(BatchCommandSpec::Params {
            key: "a".into(),
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": "live batch"}}),
        });
        let req = BatchRequest {
            commands,
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        gate.batch(req, &NoPerson).await
    });
    // The batch is at the portal (held); later requests are not delayed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    f.sb.set_faults(FaultSpec::default());
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let reports = f.gate().settle_with(None, 3.0).await.unwrap();
    let run = batch.await.unwrap().unwrap();
    assert!(matches!(run, BatchRun::Done { .. }));
    assert_eq!(
        f.leads_where(json!({"TITLE": "live batch"})).await.len(),
        1,
        "added twice: the settle took a live batch's key: {reports:?}"
    );
    assert_eq!(f.requests("crm.lead.add"), 0, "{reports:?}");
}

/// Under `require_plan_for_writes` a write goes out only through plan → apply. When an applied
/// plan's answer and both resends are lost, `b24 settle` must be able to settle it: the resend
/// is the reviewed plan's own call (the audit record names the plan). Before, the settle
/// checked it as a write sent without a plan, the policy refused, and nothing could settle it.
/// Asserted from the request log: one more update, the title set once.
#[tokio::test(flavor = "multi_thread")]
async fn an_applied_plan_left_unknown_settles_under_require_plan() {
    let f = Fixture::new().await;
    let policy = || AgentPolicy {
        allow: vec!["*".into()],
        allow_unlisted: true,
        require_plan: true,
        ..Default::default()
    };
    // A write without a plan is refused outright.
    let e = f
        .gate_with(policy())
        .call(
            write(
                "crm.lead.update",
                json!({"id": 3, "fields": {"TITLE": "no plan"}}),
            ),
            &NoPerson,
        )
        .await
        .unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    let g = f.gate_with(policy());
    let planned = g
        .plan(PlanRequest {
            method: "crm.lead.update".into(),
            params: json!({"id": 3, "fields": {"TITLE": "planned"}}),
            ttl_secs: 600,
            ..Default::default()
        })
        .await
        .unwrap();
    f.lose(3);
    let r = g
        .apply(
            ApplyRequest {
                plan_id: planned.plan.id.clone(),
                confirm_write: true,
                ..Default::default()
            },
            &NoPerson,
        )
        .await;
    assert!(
        matches!(
            &r,
            Err(GateError::Client(b24::Error::OutcomeUnknown { .. }))
        ),
        "{r:?}"
    );
    f.lose(0);
    assert_eq!(f.requests("crm.lead.update"), 3);
    let reports = f.gate_with(policy()).settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "settled", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), 4);
    assert_eq!(f.leads_where(json!({"ID": 3})).await[0]["TITLE"], "planned");
    // A write left unknown without a plan is another matter: not resent under this policy.
    f.lose(3);
    let r = f
        .gate()
        .call(
            write(
                "crm.lead.update",
                json!({"id": 4, "fields": {"TITLE": "unplanned"}}),
            ),
            &NoPerson,
        )
        .await;
    assert!(unknown(&r), "{r:?}");
    f.lose(0);
    let sent = f.requests("crm.lead.update");
    let reports = f.gate_with(policy()).settle(None).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, "unknown", "{reports:?}");
    assert_eq!(f.requests("crm.lead.update"), sent, "not resent");
}
