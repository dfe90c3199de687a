//! The gate in process: policies resolved from operator files in a temp dir (standing in for
//! `/etc/b24/policy.toml` and the account's home), a [`Gate`] over an in-process sandbox, and
//! the attacks of issue 12 run straight through `Gate::call` / `batch` / `plan` / `apply` /
//! `export`. Every case asserts from the sandbox's own counters what reached the portal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use b24::export::ExportOptions;
use b24_guard::gate::{
    Answer, ApplyRequest, BatchCommandSpec, BatchRequest, CallOutcome, CallRequest, ExportRequest,
    Gate, GateError, NoPerson, Origin, Person, PlanRequest, PortalSlot,
};
use b24_guard::policy::AgentPolicy;
use b24_guard::sources::{CallerInputs, OperatorPaths, resolve};
use b24_sandbox::{Sandbox, SandboxConfig};
use futures::future::BoxFuture;
use serde_json::{Value, json};

/// Operator files in a temp dir, and the caller's state dirs beside them.
struct World {
    dir: tempfile::TempDir,
    paths: OperatorPaths,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let paths = OperatorPaths {
            system: dir.path().join("etc/b24/policy.toml"),
            user: Some(dir.path().join("home/.config/b24/policy.toml")),
            user_state: Some(dir.path().join("home/.local/state/b24")),
        };
        World { dir, paths }
    }

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn system(&self, text: &str) {
        World::write(&self.paths.system, text);
    }

    fn user(&self, text: &str) {
        World::write(self.paths.user.as_ref().unwrap(), text);
    }

    fn caller_state(&self, name: &str) -> PathBuf {
        self.dir.path().join("caller").join(name)
    }

    /// A gate over `sb` with the caller's inputs and state dir `state`.
    fn gate(&self, sb: &Sandbox, caller: &CallerInputs, state: &str, origin: Origin) -> Gate {
        let state = self.caller_state(state);
        let resolved = resolve(&self.paths, caller, &state).expect("policy resolves");
        let url = sb.info().webhook_url.clone();
        let cfg = b24::Config::from_lookup(
            &|k: &str| (k == "B24_WEBHOOK_URL").then(|| url.clone()),
            state.join("client"),
        )
        .expect("config");
        let slot = PortalSlot::new(Ok(cfg), Arc::new(tokio::sync::OnceCell::new()));
        Gate::new(resolved, slot, origin)
    }
}

async fn sandbox() -> Sandbox {
    b24_sandbox::start(SandboxConfig {
        seed_leads: 10,
        ..Default::default()
    })
    .await
    .expect("sandbox starts")
}

fn calls(sb: &Sandbox, method: &str) -> u64 {
    sb.stats().methods.get(method).copied().unwrap_or(0)
}

/// A person who gives a fixed answer and counts the questions.
struct Says {
    answer: Answer,
    can_ask: bool,
    asked: AtomicUsize,
}

impl Says {
    fn new(answer: Answer) -> Says {
        Says {
            can_ask: true,
            answer,
            asked: AtomicUsize::new(0),
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Person for Says {
    fn can_ask(&self) -> bool {
        self.can_ask
    }

    fn ask(&self, _question: String) -> BoxFuture<'_, Answer> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let a = self.answer.clone();
        Box::pin(async move { a })
    }
}

/// A call with every confirmation the caller can give itself.
fn confirmed(method: &str, params: Value) -> CallRequest {
    CallRequest {
        method: method.into(),
        params,
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    }
}

fn is_refusal(e: &GateError) -> bool {
    matches!(
        e,
        GateError::Refused(_) | GateError::Malformed(_) | GateError::Unreadable(_)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_deny_holds_for_every_spelling_and_front_door() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"crm.lead.delete\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let id = json!({"id": 1});
    let del = |k: &str| json!({ k: {"a": "crm.lead.delete?id=1"} });
    let attempts: Vec<(&str, Value)> = vec![
        ("CRM.LEAD.DELETE", id.clone()),
        ("crm.lead.delete.json", id.clone()),
        ("Crm.Lead.Delete.XML", id.clone()),
        (" crm.lead.delete\n", id.clone()),
        ("crm%2Elead%2Edelete", id.clone()),
        ("crm.lead.dеlete", id.clone()),
        ("crm.lead.delete\u{0}", id.clone()),
        ("crm.lead.delete\u{200b}", id.clone()),
        ("crm.lead.delete/", id.clone()),
        ("batch", del("cmd")),
        ("batch", del("cMd")),
        ("batch", del("Cmd")),
        ("BATCH.json", del("CMD")),
        (
            "batch",
            json!({"cmd": ["user.current", "CRM.LEAD.DELETE.xml?id=1"]}),
        ),
        (
            "batch",
            json!({"cmd": {"a": "user.current"}, "CMD": {"b": "crm.lead.delete?id=1"}}),
        ),
        (
            "batch",
            json!({"cmd": {"a": "user.current"}, "cmd[b]": "crm.lead.delete?id=1"}),
        ),
        ("batch", json!({"cmd": {"a": "crm.lead.delete%3Fid%3D1"}})),
        (
            "batch",
            json!({"cmd": {"a": "batch?cmd[b]=crm.lead.delete%3Fid%3D1"}}),
        ),
        (
            "batch",
            json!({"cmd": {"a": {"method": "crm.lead.delete"}}}),
        ),
        (
            "batch",
            json!({"cmd": {"secret_token": "crm.lead.delete?id=1"}}),
        ),
        ("batch", json!({"cmd": {"a": "user.current"}, "extra": 1})),
    ];
    let person = Says::new(Answer::Yes);
    for (m, p) in &attempts {
        let e = gate
            .call(confirmed(m, p.clone()), &person)
            .await
            .expect_err(&format!("{m:?} {p} must be refused"));
        assert!(is_refusal(&e), "{m:?} {p}: {e}");
    }
    // Plans of the same: refused when recorded.
    for (m, p) in &attempts {
        let req = PlanRequest {
            method: m.to_string(),
            params: p.clone(),
            ttl_secs: 60,
            ..Default::default()
        };
        let e = gate.plan(req).await.expect_err(&format!("plan {m:?} {p}"));
        assert!(is_refusal(&e), "plan {m:?} {p}: {e}");
    }
    // Gate::batch in both command forms.
    for spec in [
        BatchCommandSpec::Params {
            key: "x".into(),
            method: "CRM.Lead.Delete.json".into(),
            params: id.clone(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "crm.lead.delete.XML?id=1".into(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "batch?cmd[y]=crm.lead.delete".into(),
        },
        BatchCommandSpec::Text {
            key: "x".into(),
            text: "crm%2Elead%2Edelete?id=1".into(),
        },
    ] {
        let req = BatchRequest {
            commands: vec![
                BatchCommandSpec::Text {
                    key: "me".into(),
                    text: "user.current".into(),
                },
                spec.clone(),
            ],
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        let e = gate
            .batch(req, &person)
            .await
            .expect_err(&format!("{spec:?}"));
        assert!(is_refusal(&e), "{spec:?}: {e}");
    }
    // The person is never bothered about a call the policy refuses anyway.
    assert_eq!(person.asked(), 0);
    // Exports: never a batch, never a write, never an unknown method; spellings normalised.
    for m in [
        "batch",
        "BATCH.json",
        "crm.lead.delete",
        "crm.lead.purge",
        "crm.lead.add",
    ] {
        let req = ExportRequest {
            opts: ExportOptions::new(m, json!({"cmd": {"a": "crm.lead.delete?id=1"}})),
        };
        let e = gate
            .export(req)
            .await
            .err()
            .unwrap_or_else(|| panic!("export {m}"));
        assert!(is_refusal(&e), "export {m}: {e}");
    }
    assert_eq!(sb.stats().requests, 0, "{:?}", sb.request_log());
    // A read-only call (b24_read) of a batch of reads is still refused: batches are not reads there.
    let req = CallRequest {
        method: "batch".into(),
        params: json!({"cmd": {"a": "crm.lead.list"}}),
        reads_only: true,
        ..Default::default()
    };
    assert!(gate.call(req, &NoPerson).await.is_err());
    // And a plain spelled read goes through, normalised.
    let ok = gate
        .call(
            CallRequest {
                method: "CRM.Lead.List.json".into(),
                ..Default::default()
            },
            &NoPerson,
        )
        .await
        .expect("a read");
    assert!(matches!(ok, CallOutcome::Done { .. }));
    assert_eq!(calls(&sb, "crm.lead.list"), 1);
    assert_eq!(calls(&sb, "crm.lead.delete"), 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_inputs_cannot_skip_or_widen_the_operator_files() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("read_only = true\n");
    // The caller points the config dir at a file that allows everything, lifts strict mode,
    // and brings layers of its own: nothing widens the operator's read-only.
    let wide = w.dir.path().join("elsewhere/policy.toml");
    World::write(&wide, "allow = [\"*\"]\n");
    let caller = CallerInputs {
        flags: AgentPolicy {
            allow: vec!["*".into()],
            allow_unlisted: true,
            ..Default::default()
        },
        extra: vec![],
        config_dir_policy: Some(wide),
    };
    for state in ["a", "b"] {
        let gate = w.gate(&sb, &caller, state, Origin::Cli);
        let e = gate
            .call(
                confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}})),
                &NoPerson,
            )
            .await
            .expect_err("read-only");
        let r = e.refusal().expect("a refusal");
        assert!(r.operator_locked, "{r}");
        // The records live in the account's state dir, whatever the caller's state dir is.
        assert_eq!(gate.guard_dir(), w.paths.user_state.as_deref().unwrap());
    }
    // The config-dir file *is* the operator's own file: read once, as the operator's.
    let same = CallerInputs {
        config_dir_policy: w.paths.user.clone(),
        ..Default::default()
    };
    let r = resolve(&w.paths, &same, &w.caller_state("c")).unwrap();
    assert_eq!(r.policy.layers.len(), 2, "operator + flags");
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_operator_file_refuses_everything_with_file_and_line() {
    let w = World::new();
    for (text, line) in [
        ("read_only = false\ndeny = [\"crm.{lead\"]\n", 2),
        ("deny = [\"crm.lead.delete\"]\nreadonly = true\n", 2),
        ("max_writes_per_hour = \"ten\"\n", 1),
        ("require_person_confirmation = \"always\"\n", 1),
        ("allow = [\"\"]\n", 1),
    ] {
        w.system(text);
        let e = resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).expect_err(text);
        let shown = format!("{e}");
        assert!(
            shown.contains(&format!("policy.toml:{line}")),
            "{text:?}: {shown}"
        );
    }
    // A policy path that cannot be read as a file (a directory) is an error too, not "absent".
    std::fs::remove_file(&w.paths.system).unwrap();
    std::fs::create_dir_all(&w.paths.system).unwrap();
    assert!(resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).is_err());
    // Invalid UTF-8.
    std::fs::remove_dir(&w.paths.system).unwrap();
    std::fs::write(&w.paths.system, b"deny = [\"\xff\"]\n").unwrap();
    assert!(resolve(&w.paths, &CallerInputs::default(), &w.caller_state("a")).is_err());
    // A broken caller layer (config dir) refuses too.
    std::fs::remove_file(&w.paths.system).unwrap();
    let bad = w.dir.path().join("cfg/policy.toml");
    World::write(&bad, "deny = [\"[\"]\n");
    let caller = CallerInputs {
        config_dir_policy: Some(bad),
        ..Default::default()
    };
    let e = resolve(&w.paths, &caller, &w.caller_state("a")).unwrap_err();
    assert!(format!("{e}").contains("policy.toml:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_budget_survives_a_fresh_state_dir() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("max_writes_per_hour = 2\n");
    let add = || confirmed("crm.lead.add", json!({"fields": {"TITLE": "budget"}}));
    for state in ["one", "two"] {
        let gate = w.gate(&sb, &CallerInputs::default(), state, Origin::Cli);
        gate.call(add(), &NoPerson)
            .await
            .expect("within the budget");
    }
    let gate = w.gate(&sb, &CallerInputs::default(), "fresh", Origin::Cli);
    let e = gate
        .call(add(), &NoPerson)
        .await
        .expect_err("budget used up");
    assert!(e.refusal().is_some_and(|r| r.operator_locked), "{e}");
    assert_eq!(calls(&sb, "crm.lead.add"), 2);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_batch_counts_every_write_against_the_budget() {
    let sb = sandbox().await;
    let w = World::new();
    w.user("max_writes_per_hour = 2\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let cmd: serde_json::Map<String, Value> = (0..5)
        .map(|i| {
            (
                format!("c{i}"),
                json!(format!("crm.lead.add?fields[TITLE]=b{i}")),
            )
        })
        .collect();
    let res = gate
        .call(confirmed("batch", json!({"cmd": cmd})), &NoPerson)
        .await;
    let sent = calls(&sb, "crm.lead.add");
    // Gate::batch refuses the same five writes (each counts); the raw `batch` call must too.
    assert!(
        sent <= 2,
        "HOLE: a raw `batch` call of 5 crm.lead.add took one write from a budget of 2 per hour and \
         sent {sent} writes (result ok: {})",
        res.is_ok()
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_batch_under_a_budget_sends_nothing_it_cannot_afford() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("max_writes_per_hour = 2\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let commands = (0..5)
        .map(|i| BatchCommandSpec::Params {
            key: format!("c{i}"),
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": format!("b{i}")}}),
        })
        .collect();
    let req = BatchRequest {
        commands,
        confirm_write: true,
        ..Default::default()
    };
    let e = gate.batch(req, &NoPerson).await.expect_err("over budget");
    assert!(e.refusal().is_some(), "{e}");
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

/// The operator's budget is a total for the portal: MCP clients have budgets of their own,
/// but two clients and the CLI together still write no more than the operator allows.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_clients_and_the_cli_share_the_operators_total_budget() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("max_writes_per_hour = 3\n");
    let add = |t: &str| confirmed("crm.lead.add", json!({"fields": {"TITLE": t}}));
    let a = w
        .gate(&sb, &CallerInputs::default(), "a", Origin::Mcp)
        .with_client("alpha");
    let b = w
        .gate(&sb, &CallerInputs::default(), "b", Origin::Mcp)
        .with_client("beta");
    let cli = w.gate(&sb, &CallerInputs::default(), "c", Origin::Cli);
    a.call(add("a1"), &NoPerson).await.expect("alpha 1");
    a.call(add("a2"), &NoPerson).await.expect("alpha 2");
    b.call(add("b1"), &NoPerson).await.expect("beta 1");
    let e = b
        .call(add("b2"), &NoPerson)
        .await
        .expect_err("a fourth write over the operator's 3");
    assert!(e.refusal().is_some(), "{e}");
    let e = cli
        .call(add("c1"), &NoPerson)
        .await
        .expect_err("the CLI counts in the same total");
    assert!(e.refusal().is_some(), "{e}");
    assert_eq!(calls(&sb, "crm.lead.add"), 3);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persons_confirm_when_they_can_be_asked_and_the_operator_can_demand_them() {
    let sb = sandbox().await;
    let w = World::new();
    let del = |id: u64| confirmed("crm.lead.delete", json!({"id": id}));

    // No operator key, MCP with a person: the model's confirm_destructive is not enough.
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let no = Says::new(Answer::No("declined".into()));
    assert!(gate.call(del(1), &no).await.is_err());
    assert_eq!(no.asked(), 1);
    let cannot = Says::new(Answer::CannotAsk);
    assert!(gate.call(del(1), &cannot).await.is_err());
    assert_eq!(cannot.asked(), 1);
    assert_eq!(calls(&sb, "crm.lead.delete"), 0);
    let yes = Says::new(Answer::Yes);
    gate.call(del(1), &yes).await.expect("the person said yes");
    assert_eq!((yes.asked(), calls(&sb, "crm.lead.delete")), (1, 1));
    // A plain write is not put to the person (flags suffice) unless the operator asks.
    let add = confirmed("crm.lead.add", json!({"fields": {"TITLE": "p"}}));
    let spy = Says::new(Answer::No("no".into()));
    gate.call(add.clone(), &spy)
        .await
        .expect("a confirmed write");
    assert_eq!(spy.asked(), 0);
    // Where nobody can be asked, the flags are the confirmation.
    gate.call(del(2), &NoPerson)
        .await
        .expect("flags, no person");
    assert_eq!(calls(&sb, "crm.lead.delete"), 2);

    // The operator demands a person for destructive calls: refused where nobody can be asked,
    // in the CLI and in MCP, for a call, a batch and an apply.
    w.system("require_person_confirmation = \"destructive\"\n");
    for origin in [Origin::Cli, Origin::Mcp] {
        let gate = w.gate(&sb, &CallerInputs::default(), "a", origin);
        let e = gate.call(del(3), &NoPerson).await.expect_err("no person");
        assert!(e.refusal().is_some_and(|r| r.operator_locked), "{e}");
        let req = BatchRequest {
            commands: vec![BatchCommandSpec::Text {
                key: "d".into(),
                text: "crm.lead.delete?id=3".into(),
            }],
            confirm_write: true,
            confirm_destructive: true,
            ..Default::default()
        };
        assert!(gate.batch(req, &NoPerson).await.is_err());
        let raw = confirmed("batch", json!({"cMd": {"d": "crm.lead.delete?id=3"}}));
        assert!(gate.call(raw, &NoPerson).await.is_err());
        let plan = gate
            .plan(PlanRequest {
                method: "crm.lead.delete".into(),
                params: json!({"id": 3}),
                ttl_secs: 60,
                ..Default::default()
            })
            .await
            .expect("planning sends nothing");
        let apply = ApplyRequest {
            plan_id: plan.plan.id.clone(),
            confirm_write: true,
            confirm_destructive: true,
            expect: None,
        };
        assert!(gate.apply(apply.clone(), &NoPerson).await.is_err());
        let no = Says::new(Answer::No("no".into()));
        assert!(gate.apply(apply.clone(), &no).await.is_err());
        assert_eq!(no.asked(), 1);
        // Writes that are not destructive still go by the flags.
        gate.call(add.clone(), &NoPerson).await.expect("a write");
    }
    assert_eq!(calls(&sb, "crm.lead.delete"), 2);

    // The operator demands a person for every write.
    w.system("require_person_confirmation = \"writes\"\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let adds = calls(&sb, "crm.lead.add");
    assert!(gate.call(add.clone(), &NoPerson).await.is_err());
    let no = Says::new(Answer::No("no".into()));
    assert!(gate.call(add.clone(), &no).await.is_err());
    let raw = confirmed("batch", json!({"cmd": ["crm.lead.add?fields[TITLE]=r"]}));
    assert!(gate.call(raw, &NoPerson).await.is_err());
    assert_eq!(calls(&sb, "crm.lead.add"), adds);
    let yes = Says::new(Answer::Yes);
    gate.call(add.clone(), &yes)
        .await
        .expect("the person said yes");
    assert_eq!(calls(&sb, "crm.lead.add"), adds + 1);
    // Reads are never put to the person.
    let spy = Says::new(Answer::No("no".into()));
    gate.call(
        CallRequest {
            method: "crm.lead.list".into(),
            ..Default::default()
        },
        &spy,
    )
    .await
    .expect("a read");
    assert_eq!(spy.asked(), 0);

    // require_plan_for_writes in MCP: the apply is confirmed by the person.
    w.system("require_plan_for_writes = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    assert!(
        gate.call(add.clone(), &Says::new(Answer::Yes))
            .await
            .is_err(),
        "a write outside a plan"
    );
    let plan = gate
        .plan(PlanRequest {
            method: "crm.lead.add".into(),
            params: json!({"fields": {"TITLE": "planned"}}),
            ttl_secs: 60,
            ..Default::default()
        })
        .await
        .unwrap();
    let apply = ApplyRequest {
        plan_id: plan.plan.id.clone(),
        confirm_write: true,
        ..Default::default()
    };
    let no = Says::new(Answer::No("no".into()));
    assert!(gate.apply(apply.clone(), &no).await.is_err());
    assert_eq!(no.asked(), 1);
    assert!(gate.apply(apply.clone(), &NoPerson).await.is_err());
    let before = calls(&sb, "crm.lead.add");
    let yes = Says::new(Answer::Yes);
    gate.apply(apply.clone(), &yes)
        .await
        .expect("the person applies");
    assert_eq!(calls(&sb, "crm.lead.add"), before + 1);
    assert!(gate.apply(apply, &yes).await.is_err(), "a plan runs once");
    assert_eq!(calls(&sb, "crm.lead.add"), before + 1);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_spelling_of_a_risk_parameter_does_not_lower_the_risk() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny_destructive = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // event.offline.get clears the queue unless clear=0: a destructive call, denied here.
    let plain = CallRequest {
        method: "event.offline.get".into(),
        params: json!({"clear": 1}),
        confirm_write: true,
        ..Default::default()
    };
    assert!(gate.call(plain, &NoPerson).await.is_err());
    let mut failures = Vec::new();
    for (what, params, method) in [
        (
            "CLEAR=0 before clear=1",
            json!({"CLEAR": 0, "clear": 1}),
            "event.offline.get",
        ),
        (
            "clear=1 before Clear=0 (last wins in PHP)",
            json!({"clear": 1, "Clear": 0}),
            "event.offline.get",
        ),
        (
            "batch: CLEAR=0&clear=1",
            json!({"cmd": {"a": "event.offline.get?CLEAR=0&clear=1"}}),
            "batch",
        ),
    ] {
        let before = sb.stats().requests;
        let req = CallRequest {
            method: method.into(),
            params: params.clone(),
            confirm_write: true,
            ..Default::default()
        };
        let r = gate.call(req, &NoPerson).await;
        let sent = sb.stats().requests - before;
        if r.is_ok() || sent > 0 {
            failures.push(format!(
                "{what}: `{method}` with {params} under deny_destructive was sent ({sent} request(s)) with only confirm_write"
            ));
        }
    }
    // b24_read of imbot.v2.event.get is a read only at offset 0; OFFSET=5 beside offset=0.
    let req = CallRequest {
        method: "imbot.v2.event.get".into(),
        params: json!({"offset": 0, "OFFSET": 5}),
        reads_only: true,
        ..Default::default()
    };
    let before = sb.stats().requests;
    let r = gate.call(req, &NoPerson).await;
    if !matches!(r, Err(GateError::Refused(_))) || sb.stats().requests > before {
        failures.push(format!(
            "imbot.v2.event.get {{offset:0, OFFSET:5}} passed as a read (b24_read): sent {}",
            sb.stats().requests - before
        ));
    }
    assert!(failures.is_empty(), "HOLE(s):\n{}", failures.join("\n"));
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_keep_personal_data_out_of_the_audit_log() {
    let sb = sandbox().await;
    let w = World::new();
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // Not confirmed: refused, and recorded. The default audit keeps keys and digests only.
    let req = CallRequest {
        method: "crm.lead.add".into(),
        params: json!({"fields": {"NAME": "Privatus Personname", "PHONE": [{"VALUE": "+49 170 5550123"}]}}),
        ..Default::default()
    };
    let e = gate.call(req, &NoPerson).await.expect_err("unconfirmed");
    assert!(e.refusal().is_some());
    let log = std::fs::read_to_string(gate.audit_log().path()).unwrap_or_default();
    assert!(!log.is_empty(), "the refusal is recorded");
    assert!(
        !log.contains("Privatus") && !log.contains("5550123"),
        "HOLE: the refusal's `fix` (b24 plan … --params '<params>') copies the params into the \
         audit log although audit_params is `keys`: {log}"
    );
    assert_eq!(sb.stats().requests, 0);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_handed_in_by_the_caller_never_reach_the_audit_log() {
    let sb = sandbox().await;
    let w = World::new();
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    let code = sb.info().webhook_code.clone();
    let mut failures = Vec::new();
    for (what, method, params) in [
        (
            "the webhook URL as a method name (malformed)",
            format!("{}crm.lead.list", sb.info().webhook_url),
            json!({}),
        ),
        (
            "the webhook code in a refused write's params",
            "crm.lead.add".to_string(),
            json!({"fields": {"COMMENTS": code}}),
        ),
        (
            "the webhook code in a refused raw batch command",
            "batch".to_string(),
            json!({"cmd": {"a": format!("crm.lead.add?x={code}&y=%")}, "halt": code}),
        ),
    ] {
        let req = CallRequest {
            method: method.clone(),
            params: params.clone(),
            ..Default::default()
        };
        let seen = std::fs::read_to_string(gate.audit_log().path())
            .unwrap_or_default()
            .lines()
            .count();
        let e = gate.call(req, &NoPerson).await.expect_err(what);
        let shown = gate.redact_text(&e.to_string());
        assert!(!shown.contains(&code), "{what}: the message {shown}");
        let log = std::fs::read_to_string(gate.audit_log().path()).unwrap_or_default();
        if let Some(line) = log.lines().skip(seen).find(|l| l.contains(&code)) {
            failures.push(format!("{what}: `{method}` {params} → audit record {line}"));
        }
    }
    assert_eq!(sb.stats().requests, 0);
    assert!(
        failures.is_empty(),
        "HOLE(s): the webhook code is written to the audit log:\n{}",
        failures.join("\n")
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_cannot_all_pass_the_budget_check() {
    let sb = sandbox().await;
    let w = Arc::new(World::new());
    w.system("max_writes_per_hour = 1\n");
    let barrier = Arc::new(tokio::sync::Barrier::new(24));
    let sb = Arc::new(sb);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (w, b, sb) = (w.clone(), barrier.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            // One gate (one store connection) per writer, as separate processes would have.
            let gate = w.gate(&sb, &CallerInputs::default(), &format!("p{i}"), Origin::Cli);
            let req = confirmed(
                "crm.lead.add",
                json!({"fields": {"TITLE": format!("race{i}")}}),
            );
            b.wait().await;
            gate.call(req, &NoPerson).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    let sent = calls(&sb, "crm.lead.add");
    assert!(
        sent <= 1 && ok <= 1,
        "HOLE: {sent} writes sent ({ok} allowed) by 24 parallel writers under max_writes_per_hour = 1 \
         (take_write checks writes_last_hour() and then count_write() in two steps)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_deny_of_batch_itself_holds() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"batch\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    let raw = gate
        .call(
            confirmed("batch", json!({"cmd": {"a": "crm.lead.list"}})),
            &NoPerson,
        )
        .await;
    let req = BatchRequest {
        commands: vec![BatchCommandSpec::Text {
            key: "a".into(),
            text: "crm.lead.list".into(),
        }],
        ..Default::default()
    };
    let tool = gate.batch(req, &NoPerson).await;
    let sent = calls(&sb, "batch");
    assert!(
        raw.is_err() && tool.is_err() && sent == 0,
        "HOLE: `deny = [\"batch\"]` in the operator file does not stop batches: raw call ok {}, \
         Gate::batch ok {}, {sent} batch request(s) sent",
        raw.is_ok(),
        tool.is_ok()
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_wait_for_an_audit_log_unless_the_operator_allows_unaudited_reads() {
    let sb = sandbox().await;
    let w = World::new();
    w.system("deny = [\"crm.deal.*\"]\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    // The log cannot take records: its path is a directory.
    std::fs::create_dir_all(gate.audit_log().path()).unwrap();
    let read = || CallRequest {
        method: "crm.lead.list".into(),
        params: json!({}),
        ..Default::default()
    };
    let e = gate
        .call(read(), &NoPerson)
        .await
        .expect_err("unrecorded read");
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    let write = confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}}));
    let e = gate
        .call(write, &NoPerson)
        .await
        .expect_err("unrecorded write");
    assert!(matches!(e, GateError::Audit(_)), "{e}");
    assert_eq!(sb.stats().requests, 0, "nothing reached the portal");
    w.system("allow_unaudited_reads = true\n");
    let gate = w.gate(&sb, &CallerInputs::default(), "a", Origin::Cli);
    assert!(gate.call(read(), &NoPerson).await.is_ok());
    let write = confirmed("crm.lead.add", json!({"fields": {"TITLE": "x"}}));
    assert!(
        gate.call(write, &NoPerson).await.is_err(),
        "writes never go unrecorded"
    );
    assert_eq!(calls(&sb, "crm.lead.list"), 1);
    assert_eq!(calls(&sb, "crm.lead.add"), 0);
}

/// Hostile: keys that look positional to a digit test but are names to PHP (`02`, `+1`):
/// PHP turns only canonical decimal keys into indexes, so `{"02": …}` is an unknown parameter
/// the portal ignores, and the strict check must refuse it like any other. Nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_read_positions_as_php_does() {
    let sb = sandbox().await;
    let w = World::new();
    let mcp = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    for p in [
        json!({"id": 1, "02": {"TITLE": "x"}}),
        json!({"id": 1, "+1": {"TITLE": "x"}}),
        json!({"id": 1, "fields": {"TITLE": "x"}, "params": {"00": "Y"}}),
        json!({"id": 1, "params[01]": "Y"}),
    ] {
        let e = mcp
            .call(confirmed("crm.deal.update", p.clone()), &NoPerson)
            .await
            .expect_err(&format!("{p}"));
        let r = e.refusal().unwrap_or_else(|| panic!("{p}: {e}"));
        assert!(r.reason.contains("does not take"), "{p}: {r}");
    }
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());
}

/// Strict parameters: on by default for MCP, off for the CLI, forced by an operator file; a
/// parameter the method does not take is refused on every front door (call, raw batch, batch
/// commands, plan) and nothing reaches the portal.
#[tokio::test(flavor = "multi_thread")]
async fn strict_params_refuse_before_anything_is_sent() {
    let sb = sandbox().await;
    let w = World::new();
    let mcp = w.gate(&sb, &CallerInputs::default(), "a", Origin::Mcp);
    assert!(mcp.strict_params());
    let attacks = [
        (
            "crm.deal.update",
            json!({"id": 1, "feilds": {"TITLE": "x"}}),
        ),
        (
            "crm.deal.update",
            json!({"ID": 1, "FEILDS": {"TITLE": "x"}}),
        ),
        (
            "CRM.Deal.Update",
            json!({"id": 1, "fields": {}, "params": {"evil": "Y"}}),
        ),
        ("crm.deal.update", json!({"id": 1, "params[evil]": "Y"})),
        ("user.current", json!({"x": 1})),
        (
            "batch",
            json!({"cmd": {"a": "crm.deal.get?id=1&select[]=ID&Sneaky=1"}}),
        ),
        (
            "batch",
            json!({"Cmd": ["crm.deal.update?id=1&PARAMS[evil]=1"]}),
        ),
    ];
    for (m, p) in &attacks {
        let e = mcp
            .call(confirmed(m, p.clone()), &NoPerson)
            .await
            .expect_err(&format!("{m} {p}"));
        let r = e.refusal().unwrap_or_else(|| panic!("{m} {p}: {e}"));
        assert!(r.reason.contains("does not take"), "{m} {p}: {r}");
        let plan = PlanRequest {
            method: m.to_string(),
            params: p.clone(),
            ttl_secs: 60,
            ..Default::default()
        };
        assert!(mcp.plan(plan).await.is_err(), "plan {m} {p}");
    }
    let batch = BatchRequest {
        commands: vec![
            BatchCommandSpec::Params {
                key: "ok".into(),
                method: "crm.lead.list".into(),
                params: json!({"select": ["ID"]}),
            },
            BatchCommandSpec::Text {
                key: "bad".into(),
                text: "crm.lead.get?id=1&EVIL[x]=1".into(),
            },
        ],
        ..Default::default()
    };
    let e = mcp.batch(batch, &NoPerson).await.expect_err("batch");
    assert!(
        e.refusal().is_some_and(|r| r.reason.contains("EVIL")),
        "{e}"
    );
    assert!(sb.request_log().is_empty(), "{:?}", sb.request_log());

    // The CLI does not check unless asked; the caller can turn MCP's default off.
    let cli = w.gate(&sb, &CallerInputs::default(), "b", Origin::Cli);
    assert!(!cli.strict_params());
    cli.call(confirmed("user.current", json!({"x": 1})), &NoPerson)
        .await
        .expect("sent");
    let off = CallerInputs {
        flags: AgentPolicy {
            strict_params: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    let lax = w.gate(&sb, &off, "c", Origin::Mcp);
    assert!(!lax.strict_params());
    assert_eq!(calls(&sb, "user.current"), 1);

    // An operator file forces it: the caller's `false` does not lift it, and the refusal says so.
    w.user("strict_params = true\n");
    let forced = w.gate(&sb, &off, "d", Origin::Cli);
    assert!(forced.strict_params());
    let e = forced
        .call(confirmed("user.current", json!({"X": 1})), &NoPerson)
        .await
        .expect_err("forced");
    let r = e.refusal().expect("a refusal");
    assert!(r.operator_locked && r.fix.contains("no flag"), "{r}");
    assert_eq!(
        calls(&sb, "user.current"),
        1,
        "the refused call was not sent"
    );
}
