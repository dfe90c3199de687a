//! The attack suite (issue 12): a hostile agent tries to get past the gate through the CLI and
//! through `b24 mcp`. Every attempt is one row of a table; each row runs through both front ends
//! where that makes sense and asserts, from the sandbox's own request counters, what reached the
//! portal. The table is printed at the end (`cargo test -p b24-cli --test it attacks -- --nocapture`); a row
//! that gets through is listed as a failure with its reproduction, and the test fails once at
//! the end so the whole table is always printed.
//!
//! One sandbox and one MCP session per policy setup are reused, so the suite stays fast.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, FormElicitationCapability,
    Implementation,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};

type Plain = RunningService<RoleClient, ()>;

/// An MCP client whose person can be asked, always says no, and counts the questions.
#[derive(Clone, Default)]
struct Decliner {
    asked: Arc<AtomicUsize>,
}

impl ClientHandler for Decliner {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.elicitation =
            Some(ElicitationCapability::new().with_form(FormElicitationCapability::default()));
        ClientConfig::new(caps, Implementation::new("attack-person", "1.0"))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(ElicitResult::new(ElicitationAction::Decline))
    }
}

async fn connect(env: &Env, extra: &[&str]) -> Plain {
    let mut args = vec!["mcp"];
    args.extend_from_slice(extra);
    let cmd = tokio::process::Command::from(env.cmd(&args));
    tokio::time::timeout(
        Duration::from_secs(30),
        ().serve(TokioChildProcess::new(cmd).expect("spawn b24 mcp")),
    )
    .await
    .expect("initialize in time")
    .expect("initialize")
}

async fn connect_person(env: &Env, p: Decliner) -> RunningService<RoleClient, Decliner> {
    let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
    tokio::time::timeout(
        Duration::from_secs(30),
        p.serve(TokioChildProcess::new(cmd).expect("spawn b24 mcp")),
    )
    .await
    .expect("initialize in time")
    .expect("initialize")
}

/// A tool call; a protocol error (bad arguments) counts as refused with its message.
async fn tool<S: rmcp::service::Service<RoleClient>>(
    c: &RunningService<RoleClient, S>,
    name: &str,
    args: Value,
) -> (bool, String) {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let p = CallToolRequestParams::new(name.to_string()).with_arguments(args);
    match tokio::time::timeout(Duration::from_secs(60), c.call_tool(p))
        .await
        .expect("answer in time")
    {
        Ok(r) => (is_error(&r), text(&r)),
        Err(e) => (true, format!("protocol error: {e}")),
    }
}

fn text(r: &CallToolResult) -> String {
    let mut t: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    if let Some(s) = &r.structured_content {
        t.push(s.to_string());
    }
    t.join("\n")
}

fn is_error(r: &CallToolResult) -> bool {
    r.is_error == Some(true)
}

fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut c: String = one.chars().take(70).collect();
    if one.chars().count() > 70 {
        c.push('…');
    }
    c
}

/// Requests the sandbox has received so far.
fn seen(sb: &Sandbox) -> u64 {
    sb.stats().requests
}

struct Row {
    attempt: String,
    cli: String,
    mcp: String,
    reached: u64,
    allowed: u64,
}

/// The table of attempts, and the failures found while filling it.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    failures: Vec<String>,
    /// The sandbox's credentials: never to be printed by either front end.
    secrets: Vec<String>,
}

impl Table {
    fn check(&mut self, attempt: &str, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.failures
                .push(format!("HOLE in `{attempt}`: {}", msg.into()));
        }
    }

    /// Add a row; a panic or a printed secret in either front end is a hole too.
    fn push(&mut self, r: Row) {
        for (fe, out) in [("cli", &r.cli), ("mcp", &r.mcp)] {
            let leaked = self.secrets.iter().any(|s| out.contains(s.as_str()));
            if out.contains("PANICKED") || out.contains("SECRET LEAKED") || leaked {
                self.failures
                    .push(format!("HOLE in `{}`: {fe}: {out}", r.attempt));
            }
        }
        self.rows.push(r);
    }

    fn print(&self) {
        let w = self.rows.iter().map(|r| r.attempt.len()).max().unwrap_or(7);
        println!(
            "\n{:<w$} | {:<40} | {:<40} | reached portal",
            "attempt", "cli", "mcp"
        );
        println!("{}", "-".repeat(w + 105));
        for r in &self.rows {
            let cli: String = r.cli.chars().take(40).collect();
            let mcp: String = r.mcp.chars().take(40).collect();
            let reached = if r.allowed > 0 {
                format!("{} (expected {})", r.reached, r.allowed)
            } else {
                r.reached.to_string()
            };
            println!("{:<w$} | {cli:<40} | {mcp:<40} | {reached}", r.attempt);
        }
        println!(
            "\n{} attempts, {} holes",
            self.rows.len(),
            self.failures.len()
        );
        for f in &self.failures {
            println!("  {f}");
        }
    }
}

/// One CLI run: exit code and a short outcome; checks for panics and secrets.
async fn cli(env: &Env, args: &[&str], secrets: &[String]) -> (i32, String, String) {
    let o = env.run(args).await;
    let err = stderr(&o);
    let both = format!("{err}{}", stdout(&o));
    let mut flags = String::new();
    if err.contains("panicked") {
        flags.push_str("PANICKED ");
    }
    if secrets
        .iter()
        .any(|s| s.len() >= 6 && both.contains(s.as_str()))
    {
        flags.push_str("SECRET LEAKED ");
    }
    let c = code(&o);
    let shown = if c == 0 {
        format!("{flags}exit 0 {}", short(&stdout(&o)))
    } else {
        format!("{flags}exit {c} {}", short(&err))
    };
    (c, shown, format!("{err}{}", stdout(&o)))
}

/// A call attempt through both front ends: `b24 call` with both confirmation flags, and
/// b24_write with both confirmations (the model confirms everything it can).
struct CallCase {
    name: &'static str,
    method: String,
    params: Value,
    /// Expected exit code of the CLI (2 malformed, 4 refused).
    code: i32,
}

fn c(name: &'static str, method: &str, params: Value, code: i32) -> CallCase {
    CallCase {
        name,
        method: method.to_string(),
        params,
        code,
    }
}

const DEL: &str = "crm.lead.delete";

fn call_cases() -> Vec<CallCase> {
    let id = json!({"id": 1});
    let del = |k: &str, v: Value| json!({ k: v });
    vec![
        // method-name spellings (the operator-ish deny glob is `crm.lead.delete`)
        c("name: upper case", "CRM.LEAD.DELETE", id.clone(), 4),
        c("name: mixed case", "Crm.Lead.Delete", id.clone(), 4),
        c("name: .json suffix", "crm.lead.delete.json", id.clone(), 4),
        c("name: .XML suffix", "crm.lead.delete.XML", id.clone(), 4),
        c(
            "name: double suffix",
            "crm.lead.delete.json.xml",
            id.clone(),
            2,
        ),
        c(
            "name: %2E-encoded dots",
            "crm%2Elead%2Edelete",
            id.clone(),
            2,
        ),
        c(
            "name: %2Ejson suffix",
            "crm.lead.delete%2Ejson",
            id.clone(),
            2,
        ),
        c(
            "name: Cyrillic look-alike e",
            "crm.lead.dеlete",
            id.clone(),
            2,
        ),
        c("name: fullwidth dots", "crm．lead．delete", id.clone(), 2),
        c(
            "name: surrounding blanks",
            "  crm.lead.delete\t",
            id.clone(),
            4,
        ),
        c("name: inner blank", "crm.lead. delete", id.clone(), 2),
        c("name: control char", "crm.lead.delete\u{1}", id.clone(), 2),
        c(
            "name: zero-width space",
            "crm.lead.delete\u{200b}",
            id.clone(),
            2,
        ),
        c("name: trailing slash", "crm.lead.delete/", id.clone(), 2),
        c("name: path traversal", "../crm.lead.delete", id.clone(), 2),
        c("name: query in name", "crm.lead.delete?id=1", json!({}), 2),
        c("name: empty segment", "crm..lead.delete", id.clone(), 2),
        // batch spellings, sent as a raw `batch` call
        c(
            "batch: cMd",
            "batch",
            del("cMd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: Cmd",
            "batch",
            del("Cmd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: CMD",
            "batch",
            del("CMD", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: ' cmd ' key",
            "batch",
            del(" cmd ", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: array cmd",
            "batch",
            del("cmd", json!(["user.current", "crm.lead.delete?id=1"])),
            4,
        ),
        c(
            "batch: two cmd keys",
            "batch",
            json!({"cmd": {"a": "user.current"}, "CMD": {"b": "crm.lead.delete?id=1"}}),
            4,
        ),
        c(
            "batch: cmd[x] flat keys",
            "batch",
            json!({"cmd": {"a": "user.current"}, "cmd[b]": "crm.lead.delete?id=1"}),
            4,
        ),
        c(
            "batch: URL-encoded command",
            "batch",
            del("cmd", json!({"a": "crm.lead.delete%3Fid%3D1"})),
            4,
        ),
        c(
            "batch: %-encoded method",
            "batch",
            del("cmd", json!({"a": "crm%2Elead%2Edelete?id=1"})),
            4,
        ),
        c(
            "batch: nested batch",
            "batch",
            del("cmd", json!({"a": "batch?cmd[b]=crm.lead.delete%3Fid%3D1"})),
            4,
        ),
        c(
            "batch: object command",
            "batch",
            del(
                "cmd",
                json!({"a": {"method": "crm.lead.delete", "params": {"id": 1}}}),
            ),
            4,
        ),
        c(
            "batch: unknown extra key",
            "batch",
            json!({"cmd": {"a": "user.current"}, "extra": {"b": "crm.lead.delete?id=1"}}),
            4,
        ),
        c(
            "batch: CASE.json command",
            "batch",
            del("cmd", json!({"a": "CRM.Lead.Delete.json?id=1"})),
            4,
        ),
        c(
            "batch: secret-looking key",
            "batch",
            del("cmd", json!({"token": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: batch.json method",
            "BATCH.json",
            del("cMd", json!({"a": "crm.lead.delete?id=1"})),
            4,
        ),
        c(
            "batch: string cmd",
            "batch",
            del("cmd", json!("crm.lead.delete?id=1")),
            4,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn attack_suite() {
    let started = std::time::Instant::now();
    let sb = sandbox_with_leads(20).await;
    let info = sb.info().clone();
    let secrets = vec![info.webhook_code.clone(), info.access_token.clone()];
    let mut t = Table {
        secrets: secrets.clone(),
        ..Default::default()
    };

    // The base setup: a config-dir policy (a caller layer, read by CLI and MCP alike) denies
    // crm.lead.delete; the attacker passes every confirmation flag.
    let env = Env::webhook(&sb);
    std::fs::write(
        env.config_dir().join("policy.toml"),
        "deny = [\"crm.lead.delete\"]\n",
    )
    .unwrap();
    let mcp = connect(&env, &[]).await;

    for case in call_cases() {
        let params = case.params.to_string();
        let before = seen(&sb);
        let (code, cli_out, _) = cli(
            &env,
            &[
                "call",
                &case.method,
                "--params",
                &params,
                "--confirm-write",
                "--confirm-destructive",
            ],
            &secrets,
        )
        .await;
        let (err, mcp_out) = tool(
            &mcp,
            "b24_write",
            json!({"method": case.method, "params": case.params, "confirm": true, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(&sb) - before;
        let repro = format!(
            "b24 call {:?} --params '{params}' --confirm-write --confirm-destructive",
            case.method
        );
        t.check(
            case.name,
            code == case.code,
            format!("exit {code}, expected {}: {repro}: {cli_out}", case.code),
        );
        t.check(
            case.name,
            err,
            format!("b24_write was not an error: {mcp_out}"),
        );
        t.check(
            case.name,
            reached == 0,
            format!("{reached} request(s) reached the portal ({repro})"),
        );
        t.push(Row {
            attempt: case.name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
    assert_eq!(calls_of(&sb, DEL), 0, "no delete ever reached the portal");

    // MCP b24_batch (and `b24 batch`): a denied command in another spelling, and a nested batch.
    for (name, method) in [
        ("b24_batch: CASE.json command", "CRM.Lead.Delete.json"),
        ("b24_batch: nested batch command", "batch"),
        ("b24_batch: look-alike method", "crm.lead.dеlete"),
    ] {
        let before = seen(&sb);
        let cmd = json!({"key": "x", "method": method, "params": {"id": 1, "cmd": {"a": "crm.lead.delete?id=1"}}});
        let (code, cli_out, _) = cli(
            &env,
            &[
                "batch",
                "--cmd",
                &cmd.to_string(),
                "--confirm-write",
                "--confirm-destructive",
            ],
            &secrets,
        )
        .await;
        let (err, mcp_out) = tool(
            &mcp,
            "b24_batch",
            json!({"commands": [{"method": "user.current"}, {"key": "x", "method": method, "params": {"id": 1, "cmd": {"a": "crm.lead.delete?id=1"}}}], "confirm": true, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4 || code == 2,
            format!("`b24 batch --cmd '{cmd}'` exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("b24_batch not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // Read-only tools: b24_read / b24_export with a batch or a write; the CLI counterpart is
    // the same call with no confirmation (`b24 call`, `b24 export`).
    let smuggle = json!({"cMd": {"a": "crm.lead.list", "b": "crm.lead.add?fields[TITLE]=x"}});
    let ro: Vec<(&str, Vec<String>, &str, Value)> = vec![
        (
            "b24_read: batch with a write",
            vec![
                "call".into(),
                "batch".into(),
                "--params".into(),
                smuggle.to_string(),
            ],
            "b24_read",
            json!({"method": "batch", "params": smuggle}),
        ),
        (
            "b24_read: write method",
            vec![
                "call".into(),
                "crm.lead.add".into(),
                "--params".into(),
                r#"{"fields":{"TITLE":"x"}}"#.into(),
            ],
            "b24_read",
            json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}}),
        ),
        (
            "b24_read: v3 batch array",
            vec![
                "call".into(),
                "batch".into(),
                "--v3".into(),
                "--params".into(),
                r#"[{"method":"tasks.task.delete","query":{"id":1}}]"#.into(),
            ],
            "b24_read",
            json!({"method": "batch", "v3": true, "params": {"0": {"method": "tasks.task.delete", "query": {"id": 1}}}}),
        ),
        (
            "b24_export: batch",
            vec![
                "export".into(),
                "batch".into(),
                "--params".into(),
                smuggle.to_string(),
            ],
            "b24_export",
            json!({"method": "batch", "params": smuggle}),
        ),
        (
            "b24_export: write method",
            vec!["export".into(), "crm.lead.delete".into()],
            "b24_export",
            json!({"method": "crm.lead.delete"}),
        ),
        (
            "b24_export: unknown method",
            vec!["export".into(), "crm.lead.purge".into()],
            "b24_export",
            json!({"method": "crm.lead.purge"}),
        ),
        (
            // offset=0 makes the catalog call it a read; a second spelling of the same
            // parameter (the portal matches names case-insensitively) moves the cursor.
            "b24_read: offset/OFFSET duplicate",
            vec![
                "call".into(),
                "imbot.v2.event.get".into(),
                "--params".into(),
                r#"{"offset":0,"OFFSET":5}"#.into(),
            ],
            "b24_read",
            json!({"method": "imbot.v2.event.get", "params": {"offset": 0, "OFFSET": 5}}),
        ),
    ];
    for (name, args, tool_name, targs) in ro {
        let before = seen(&sb);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, cli_out, _) = cli(&env, &a, &secrets).await;
        let (err, mcp_out) = tool(&mcp, tool_name, targs.clone()).await;
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4 || code == 2,
            format!("`b24 {}` exit {code}: {cli_out}", args.join(" ")),
        );
        t.check(
            name,
            err,
            format!("{tool_name} {targs} not refused: {mcp_out}"),
        );
        t.check(
            name,
            reached == 0,
            format!(
                "{reached} request(s) reached the portal (b24 {} / {tool_name} {targs})",
                args.join(" ")
            ),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // Plans: a smuggling batch and a denied spelling are refused when planned.
    for (name, method, params) in [
        (
            "plan: smuggling batch (cMd)",
            "batch",
            json!({"cMd": {"a": "crm.lead.delete?id=2"}}),
        ),
        (
            "plan: denied name .json",
            "CRM.LEAD.DELETE.json",
            json!({"id": 2}),
        ),
    ] {
        let before = seen(&sb);
        let (code, cli_out, _) = cli(
            &env,
            &["plan", method, "--params", &params.to_string()],
            &secrets,
        )
        .await;
        let (err, mcp_out) = tool(
            &mcp,
            "b24_plan",
            json!({"method": method, "params": params}),
        )
        .await;
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4,
            format!("`b24 plan {method} --params '{params}'` exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("b24_plan not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // A destructive plan (crm.contact.delete is not denied): applied without the destructive
    // confirmation it is refused; through MCP with a person who can be asked, the model's own
    // confirm_destructive is not enough and the person says no.
    let person = Decliner::default();
    let asker = connect_person(&env, person.clone()).await;
    {
        let name = "apply: destructive plan";
        let plan = env
            .run(&["plan", "crm.contact.delete", "--params", r#"{"id":1}"#])
            .await;
        let id = json(&plan)["id"].as_str().unwrap_or_default().to_string();
        let before = seen(&sb);
        let (code, cli_out, _) = cli(&env, &["apply", &id, "--confirm-write"], &secrets).await;
        let (err, mcp_out) = tool(&mcp, "b24_apply", json!({"plan_id": id})).await;
        let asked = person.asked.load(Ordering::SeqCst);
        let (err2, mcp2) = tool(
            &asker,
            "b24_apply",
            json!({"plan_id": id, "confirm_destructive": true}),
        )
        .await;
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4,
            format!("`b24 apply {id} --confirm-write` exit {code}: {cli_out}"),
        );
        t.check(
            name,
            err,
            format!("b24_apply without confirm_destructive not refused: {mcp_out}"),
        );
        t.check(name, err2, format!("b24_apply with the model's confirm_destructive went through although a person could be asked: {mcp2}"));
        t.check(
            name,
            person.asked.load(Ordering::SeqCst) > asked,
            "the person was not asked",
        );
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: format!("{} / person: {}", short(&mcp_out), short(&mcp2)),
            reached,
            allowed: 0,
        });
    }
    for (name, args) in [
        (
            "b24_write: model confirm_destructive",
            json!({"method": "crm.contact.delete", "params": {"id": 2}, "confirm": true, "confirm_destructive": true}),
        ),
        (
            "b24_write: plan_id + model confirm",
            json!({"method": "crm.contact.delete", "params": {"id": 3}, "confirm_destructive": true, "plan_id": "__PLAN__"}),
        ),
        (
            "b24_batch: model confirm_destructive",
            json!({"commands": [{"method": "crm.contact.delete", "params": {"id": 4}}], "confirm": true, "confirm_destructive": true}),
        ),
    ] {
        let mut args = args;
        let tool_name = if args.get("commands").is_some() {
            "b24_batch"
        } else {
            "b24_write"
        };
        if args.get("plan_id").is_some() {
            let plan = env
                .run(&["plan", "crm.contact.delete", "--params", r#"{"id":3}"#])
                .await;
            args["plan_id"] = json!(json(&plan)["id"].as_str().unwrap_or_default());
        }
        let asked = person.asked.load(Ordering::SeqCst);
        let before = seen(&sb);
        let (err, mcp_out) = tool(&asker, tool_name, args.clone()).await;
        let reached = seen(&sb) - before;
        t.check(
            name,
            err,
            format!("{tool_name} {args} went through although the person can be asked: {mcp_out}"),
        );
        t.check(
            name,
            person.asked.load(Ordering::SeqCst) > asked,
            "the person was not asked",
        );
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: "n/a (flags are the CLI's confirmation)".into(),
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }
    asker.cancel().await.ok();

    // Policy placement: a policy in another --config-dir, XDG_CONFIG_HOME or HOME that tries
    // to widen (allow everything) cannot undo a narrowing rule from the environment.
    for (name, how) in [
        ("placement: --config-dir elsewhere", 0),
        ("placement: XDG_CONFIG_HOME", 1),
        ("placement: HOME elsewhere", 2),
    ] {
        let mut e = Env::webhook(&sb);
        e.set("B24_METHOD_DENYLIST", "crm.lead.delete");
        let other = e.dir.path().join("elsewhere");
        std::fs::create_dir_all(other.join("b24")).unwrap();
        std::fs::create_dir_all(other.join(".config/b24")).unwrap();
        let wide = "allow = [\"*\"]\n";
        std::fs::write(other.join("policy.toml"), wide).unwrap();
        std::fs::write(other.join("b24/policy.toml"), wide).unwrap();
        std::fs::write(other.join(".config/b24/policy.toml"), wide).unwrap();
        let mut extra: Vec<String> = Vec::new();
        match how {
            0 => extra.extend(["--config-dir".to_string(), other.display().to_string()]),
            1 => {
                e.vars.retain(|(k, _)| k != "B24_CONFIG_DIR");
                e.set("XDG_CONFIG_HOME", other.to_str().unwrap());
            }
            _ => {
                e.vars.retain(|(k, _)| k != "B24_CONFIG_DIR");
                e.set("HOME", other.to_str().unwrap());
            }
        }
        let before = seen(&sb);
        let mut a: Vec<&str> = extra.iter().map(String::as_str).collect();
        a.extend([
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":3}"#,
            "--confirm-destructive",
        ]);
        let (code, cli_out, _) = cli(&e, &a, &secrets).await;
        let m = connect(&e, &extra.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.delete", "params": {"id": 3}, "confirm": true, "confirm_destructive": true})).await;
        m.cancel().await.ok();
        let reached = seen(&sb) - before;
        t.check(name, code == 4, format!("exit {code}: {cli_out}"));
        t.check(name, err, format!("not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // --env-file and profiles feed policy the same way as the environment (CLI and `b24 mcp`),
    // while their connection variables are honoured.
    let wh = info.webhook_url.clone();
    for (name, setup) in [
        (
            "env-file: B24_READ_ONLY",
            format!("B24_WEBHOOK_URL={wh}\nB24_READ_ONLY=1\n"),
        ),
        (
            "env-file: B24_METHOD_DENYLIST",
            format!("B24_WEBHOOK_URL={wh}\nB24_METHOD_DENYLIST=crm.lead.*\n"),
        ),
        (
            "profile: read_only",
            format!("[profiles.p]\nwebhook_url = \"{wh}\"\nread_only = true\n"),
        ),
        (
            "profile: denylist as TOML array (fails closed)",
            format!(
                "[profiles.p]\nwebhook_url = \"{wh}\"\nmethod_denylist = [\"crm.lead.delete\", \"crm.lead.add\"]\n"
            ),
        ),
    ] {
        let e = Env::bare();
        let mut extra: Vec<String> = Vec::new();
        if name.starts_with("env-file") {
            let f = e.dir.path().join("agent.env");
            std::fs::write(&f, &setup).unwrap();
            extra.extend(["--env-file".into(), f.display().to_string()]);
        } else {
            std::fs::write(e.config_dir().join("config.toml"), &setup).unwrap();
            extra.extend(["--profile".into(), "p".into()]);
        }
        let ex: Vec<&str> = extra.iter().map(String::as_str).collect();
        let before = seen(&sb);
        let mut a = ex.clone();
        a.extend([
            "call",
            "crm.lead.delete",
            "--params",
            r#"{"id":4}"#,
            "--confirm-destructive",
        ]);
        let (code, cli_out, _) = cli(&e, &a, &secrets).await;
        let mut a = ex.clone();
        a.extend([
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ]);
        let (code2, cli2, _) = cli(&e, &a, &secrets).await;
        let m = connect(&e, &ex).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.delete", "params": {"id": 4}, "confirm": true, "confirm_destructive": true})).await;
        let (err2, mcp2) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true})).await;
        // the connection from the same file works: a read reaches the portal
        let (rerr, rout) = tool(&m, "b24_read", json!({"method": "user.current"})).await;
        m.cancel().await.ok();
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4 && code2 == 4,
            format!(
                "`b24 {} call crm.lead.delete|add` exit {code}/{code2}: {cli_out} / {cli2}",
                ex.join(" ")
            ),
        );
        t.check(
            name,
            err && err2,
            format!(
                "b24 mcp {}: b24_write not refused: {mcp_out} / {mcp2}",
                ex.join(" ")
            ),
        );
        // A TOML array where a comma list is expected is not a glob: the profile's policy
        // cannot be read, so every call is refused (fail closed), the read included.
        let broken = name.contains("TOML array");
        let allowed = if broken { 0 } else { 1 };
        t.check(
            name,
            rerr == broken,
            format!("read through the same source: error {rerr}: {rout}"),
        );
        t.check(
            name,
            reached == allowed,
            format!(
                "{} write request(s) reached the portal",
                reached.saturating_sub(allowed)
            ),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed,
        });
    }

    // A config-dir policy that does not parse refuses every call, reads too, naming file:line.
    for (name, text) in [
        (
            "policy: invalid glob",
            "read_only = false\ndeny = [\"crm.{lead\"]\n",
        ),
        (
            "policy: unknown key (typo)",
            "deny = [\"crm.lead.delete\"]\nreadonly = true\n",
        ),
    ] {
        let e = Env::webhook(&sb);
        std::fs::write(e.config_dir().join("policy.toml"), text).unwrap();
        let before = seen(&sb);
        let (code, cli_out, all) = cli(&e, &["call", "crm.lead.list"], &secrets).await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_read", json!({"method": "crm.lead.list"})).await;
        m.cancel().await.ok();
        let reached = seen(&sb) - before;
        t.check(
            name,
            code == 4 && all.contains("policy.toml:2"),
            format!("exit {code}, message without policy.toml:2: {cli_out}"),
        );
        t.check(
            name,
            err && mcp_out.contains("policy.toml:2"),
            format!("b24_read: {mcp_out}"),
        );
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // Write budget: a raw batch of five writes under max_writes_per_hour = 2.
    {
        let name = "budget: raw batch of 5 writes, max 2/h";
        let mut e = Env::webhook(&sb);
        e.set("B24_MAX_WRITES_PER_HOUR", "2");
        let cmds: serde_json::Map<String, Value> = (0..5)
            .map(|i| {
                (
                    format!("c{i}"),
                    json!(format!("crm.lead.add?fields[TITLE]=budget{i}")),
                )
            })
            .collect();
        let p = json!({"cmd": cmds});
        let adds = calls_of(&sb, "crm.lead.add");
        let (code, cli_out, _) = cli(
            &e,
            &[
                "call",
                "batch",
                "--params",
                &p.to_string(),
                "--confirm-write",
            ],
            &secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(
            &m,
            "b24_write",
            json!({"method": "batch", "params": p, "confirm": true}),
        )
        .await;
        m.cancel().await.ok();
        let reached = calls_of(&sb, "crm.lead.add") - adds;
        t.check(name, reached <= 2, format!("{reached} crm.lead.add reached the portal under a budget of 2 per hour: B24_MAX_WRITES_PER_HOUR=2 b24 call batch --params '{p}' --confirm-write (exit {code}; mcp error={err})"));
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 2,
        });
    }

    // Budget from a config-dir policy and a fresh --state-dir: the counter lives in the
    // caller's state dir when no operator file exists (only an operator budget is pinned;
    // see the in-process tests).
    {
        let name = "budget: --state-dir fresh (caller layer)";
        let e = Env::webhook(&sb);
        std::fs::write(
            e.config_dir().join("policy.toml"),
            "max_writes_per_hour = 1\n",
        )
        .unwrap();
        let adds = calls_of(&sb, "crm.lead.add");
        let add = [
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"b"}}"#,
            "--confirm-write",
        ];
        let (c1, _, _) = cli(&e, &add, &secrets).await;
        let (c2, cli2, _) = cli(&e, &add, &secrets).await;
        let fresh = e.dir.path().join("fresh-state");
        let mut a = vec!["--state-dir", fresh.to_str().unwrap()];
        a.extend(add);
        let (c3, cli3, _) = cli(&e, &a, &secrets).await;
        let reached = calls_of(&sb, "crm.lead.add") - adds;
        t.check(
            name,
            c1 == 0 && c2 == 4,
            format!("first write exit {c1}, second exit {c2}: {cli2}"),
        );
        // By design the counter of a caller layer lives in the caller's state dir, so a fresh
        // one starts over (the caller could as well drop its own rule); an operator budget is
        // pinned to the account's state dir (crates/b24-guard/tests/it/gate.rs).
        t.check(
            name,
            c3 == 0,
            format!("the fresh state dir changed: exit {c3}: {cli3}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: format!("2nd: {} / fresh: {}", short(&cli2), short(&cli3)),
            mcp: "n/a".into(),
            reached,
            allowed: 2,
        });
    }

    // Parameter-dependent risk: event.offline.get with clear=0 is a write, without it a
    // destructive call. Two spellings of `clear` (the portal matches names case-insensitively).
    {
        let name = "risk: CLEAR=0 + clear=1 under deny_destructive";
        let e = Env::oauth(&sb);
        std::fs::write(
            e.config_dir().join("policy.toml"),
            "deny_destructive = true\n",
        )
        .unwrap();
        let p = r#"{"CLEAR":0,"clear":1}"#;
        let before = calls_of(&sb, "event.offline.get");
        let (code, cli_out, _) = cli(
            &e,
            &[
                "call",
                "event.offline.get",
                "--params",
                p,
                "--confirm-write",
            ],
            &secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "event.offline.get", "params": {"CLEAR": 0, "clear": 1}, "confirm": true})).await;
        let bp = json!({"cmd": {"a": "event.offline.get?CLEAR=0&clear=1"}});
        let (code2, cli2, _) = cli(
            &e,
            &[
                "call",
                "batch",
                "--params",
                &bp.to_string(),
                "--confirm-write",
            ],
            &secrets,
        )
        .await;
        m.cancel().await.ok();
        let reached = calls_of(&sb, "event.offline.get") - before;
        t.check(name, code == 4 && code2 == 4, format!("exit {code} / batch exit {code2}: b24 call event.offline.get --params '{p}' --confirm-write with deny_destructive: {cli_out} / {cli2}"));
        t.check(name, err, format!("b24_write not refused: {mcp_out}"));
        t.check(name, reached == 0, format!("{reached} event.offline.get (which clears the queue) reached the portal under deny_destructive"));
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // B24_AUDIT_FILE=/dev/null has no effect: the sent write is in the audit log.
    {
        let name = "audit: B24_AUDIT_FILE=/dev/null";
        let mut e = Env::webhook(&sb);
        e.set("B24_AUDIT_FILE", "/dev/null");
        let adds = calls_of(&sb, "crm.lead.add");
        let (code, cli_out, all) = cli(
            &e,
            &[
                "call",
                "crm.lead.add",
                "--params",
                r#"{"fields":{"TITLE":"audited"}}"#,
                "--confirm-write",
            ],
            &secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "audited"}}, "confirm": true})).await;
        m.cancel().await.ok();
        let reached = calls_of(&sb, "crm.lead.add") - adds;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let sent = audit
            .lines()
            .filter(|l| l.contains("crm.lead.add") && l.contains("\"ok\""))
            .count();
        t.check(
            name,
            code == 0 && !err && sent == 2,
            format!(
                "exit {code}, mcp error {err}, {sent} ok records of 2 sent writes in audit.jsonl"
            ),
        );
        // The one expected line: the variable is named as not read (never silently ignored).
        let other: String = all
            .lines()
            .filter(|l| {
                !l.contains(
                    "B24_AUDIT_FILE is a setting of the original Python skill and is not read",
                )
            })
            .collect();
        t.check(
            name,
            !other.to_ascii_lowercase().contains("audit")
                && all.contains("B24_AUDIT_FILE is a setting of the original Python skill"),
            format!("a warning about the audit was printed, or B24_AUDIT_FILE was ignored silently: {cli_out}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 2,
        });
    }

    // Secrets in error messages: a portal that answers with a page echoing the request path.
    for (name, page) in [
        ("secret: HTML 404 echoing the path", Page::HtmlTitle),
        (
            "secret: HTML 404 echoing it in upper case",
            Page::HtmlTitleUpper,
        ),
        ("secret: text 404, echo cut at 120 chars", Page::PlainCut),
        ("secret: redirect to another origin", Page::Redirect),
    ] {
        let srv = EchoServer::start(page);
        let code_s = "s3cr3tw3bh00kc0d3abcdef";
        let mut e = Env::bare();
        e.set(
            "B24_WEBHOOK_URL",
            &format!("http://127.0.0.1:{}/rest/7/{code_s}/", srv.port),
        );
        let mine = [
            code_s.to_string(),
            code_s[..10].to_string(),
            code_s.to_ascii_uppercase(),
        ];
        let (code, cli_out, all) = cli(&e, &["call", "user.current"], &[]).await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) = tool(&m, "b24_read", json!({"method": "user.current"})).await;
        m.cancel().await.ok();
        let leaked = |s: &str| mine.iter().any(|x| s.contains(x.as_str()));
        t.check(
            name,
            code != 0 && !leaked(&all),
            format!("exit {code}; the webhook code (or its first 10 chars) is printed: {all}"),
        );
        t.check(
            name,
            err && !leaked(&mcp_out),
            format!("MCP error {err}: {mcp_out}"),
        );
        let other = srv.redirect_hits.load(Ordering::SeqCst);
        t.check(
            name,
            other == 0,
            format!("{other} request(s) followed the redirect to another origin"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached: other as u64,
            allowed: 0,
        });
    }

    // Secrets the caller hands in never land in the audit log: the webhook URL given as a
    // method name (malformed), and the webhook code inside the params of a refused write.
    for (name, method, params) in [
        (
            "audit: webhook URL as the method name",
            format!("{}crm.lead.list", info.webhook_url),
            json!({}),
        ),
        (
            "audit: secret in a refused write's params",
            "crm.lead.add".to_string(),
            json!({"fields": {"TITLE": "x", "COMMENTS": info.webhook_code}}),
        ),
    ] {
        let e = Env::webhook(&sb);
        let before = seen(&sb);
        let (code, cli_out, _) = cli(
            &e,
            &["call", &method, "--params", &params.to_string()],
            &secrets,
        )
        .await;
        let m = connect(&e, &[]).await;
        let (err, mcp_out) =
            tool(&m, "b24_write", json!({"method": method, "params": params})).await;
        m.cancel().await.ok();
        let reached = seen(&sb) - before;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let leaked = audit.contains(&info.webhook_code);
        t.check(
            name,
            code == 2 || code == 4,
            format!("exit {code}: {cli_out}"),
        );
        t.check(name, err, format!("not refused: {mcp_out}"));
        t.check(name, !leaked, format!("the webhook code is written to audit.jsonl: b24 call {method:?} --params '{params}' → {}", audit.lines().find(|l| l.contains(&info.webhook_code)).unwrap_or("").chars().take(400).collect::<String>()));
        t.check(
            name,
            reached == 0,
            format!("{reached} request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: format!(
                "{}{}",
                if leaked { "AUDIT HOLDS SECRET " } else { "" },
                mcp_out
            ),
            reached,
            allowed: 0,
        });
    }

    // The records cannot be written (the state dir is a file): a write is not sent.
    {
        let name = "audit: state dir unwritable";
        let e = Env::webhook(&sb);
        let blocker = e.dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").unwrap();
        let sd = blocker.join("state");
        let ex = ["--state-dir", sd.to_str().unwrap()];
        let before = seen(&sb);
        let mut a = ex.to_vec();
        a.extend([
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"x"}}"#,
            "--confirm-write",
        ]);
        let (code, cli_out, _) = cli(&e, &a, &secrets).await;
        let m = connect(&e, &ex).await;
        let (err, mcp_out) = tool(&m, "b24_write", json!({"method": "crm.lead.add", "params": {"fields": {"TITLE": "x"}}, "confirm": true})).await;
        m.cancel().await.ok();
        let reached = seen(&sb) - before;
        t.check(name, code != 0, format!("exit {code}: {cli_out}"));
        t.check(name, err, format!("not refused: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} write(s) sent without an audit record"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: cli_out,
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // A client on the 2026-07-28 protocol that declares elicitation: the server cannot ask
    // (no server-to-client requests in that era), so the model's confirm_destructive must not
    // stand in for the person the client says it can reach.
    {
        use rmcp::ClientServiceExt;
        use rmcp::model::ProtocolVersion;
        use rmcp::service::ClientLifecycleMode;
        let name = "b24_write: 2026-07-28 client with elicitation";
        let person = Decliner::default();
        let cmd = tokio::process::Command::from(env.cmd(&["mcp"]));
        let modern = person
            .clone()
            .serve_with_lifecycle(
                TokioChildProcess::new(cmd).unwrap(),
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .expect("server/discover");
        let before = seen(&sb);
        let args = json!({"method": "crm.contact.delete", "params": {"id": 5}, "confirm": true, "confirm_destructive": true});
        let (_err, mcp_out) = tool(&modern, "b24_write", args.clone()).await;
        modern.cancel().await.ok();
        let reached = seen(&sb) - before;
        t.check(name, mcp_out.contains("refused") || person.asked.load(Ordering::SeqCst) > 0, format!("b24_write {args} from a client that declared form elicitation went through on the model's confirm_destructive, no person asked: {mcp_out}"));
        t.check(
            name,
            reached == 0,
            format!("{reached} destructive request(s) reached the portal"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: "n/a".into(),
            mcp: mcp_out,
            reached,
            allowed: 0,
        });
    }

    // A closed pipe: `b24 call crm.lead.add … | head -c1`: no panic, the sent write audited.
    {
        let name = "pipe: stdout closed before output";
        let e = Env::webhook(&sb);
        let adds = calls_of(&sb, "crm.lead.add");
        let mut cmd = e.cmd(&["call", "crm.lead.list", "--params", r#"{"select":["*"]}"#]);
        let out = closed_stdout(&mut cmd).await;
        let mut cmd = e.cmd(&[
            "call",
            "crm.lead.add",
            "--params",
            r#"{"fields":{"TITLE":"piped"}}"#,
            "--confirm-write",
        ]);
        let out2 = closed_stdout(&mut cmd).await;
        let reached = calls_of(&sb, "crm.lead.add") - adds;
        let audit = std::fs::read_to_string(e.state_dir().join("audit.jsonl")).unwrap_or_default();
        let recorded = audit
            .lines()
            .any(|l| l.contains("crm.lead.add") && (l.contains("\"ok\"") || l.contains("sending")));
        let (c1, s1) = out;
        let (c2, s2) = out2;
        t.check(
            name,
            !s1.contains("panicked") && !s2.contains("panicked"),
            format!("panic: {s1} {s2}"),
        );
        t.check(
            name,
            c1 == 0 && c2 == 0,
            format!("exit {c1} / {c2} (closed stdout is a quiet exit 0): {s1} {s2}"),
        );
        t.check(
            name,
            reached == 1 && recorded,
            format!("{reached} write(s) sent, recorded in audit: {recorded}"),
        );
        t.push(Row {
            attempt: name.into(),
            cli: format!("exit {c1}/{c2} {}", short(&s2)),
            mcp: "n/a".into(),
            reached,
            allowed: 1,
        });
    }

    mcp.cancel().await.ok();
    t.print();
    println!("suite time: {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        t.rows.len() >= 40,
        "at least 40 attempts ({})",
        t.rows.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} hole(s):\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    sb.shutdown().await;
}

/// Run with stdout a pipe whose reading end is closed at once; (exit code, stderr).
async fn closed_stdout(cmd: &mut std::process::Command) -> (i32, String) {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    tokio::task::spawn_blocking(move || {
        let o = child.wait_with_output().unwrap();
        (code(&o), stderr(&o))
    })
    .await
    .unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Page {
    HtmlTitle,
    /// The path echoed in upper case (some servers and WAFs do).
    HtmlTitleUpper,
    PlainCut,
    Redirect,
}

/// A tiny HTTP server on loopback that answers every request with a page echoing its path, or
/// a redirect to a second server (another origin) that counts what reaches it.
struct EchoServer {
    port: u16,
    redirect_hits: Arc<AtomicUsize>,
}

fn serve(l: TcpListener, answer: impl Fn(&str) -> String + Send + 'static, hits: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = s.write_all(answer(&path).as_bytes());
        }
    });
}

impl EchoServer {
    fn start(page: Page) -> EchoServer {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        let redirect_hits = Arc::new(AtomicUsize::new(0));
        serve(
            other,
            |_| {
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"result\":{}}".into()
            },
            redirect_hits.clone(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        serve(
            l,
            move |path| match page {
                Page::HtmlTitle => {
                    let body = format!(
                        "<!DOCTYPE html><html><head><title>404 Not Found: {path}</title></head><body><h1>Not Found</h1><p>The requested URL {path} was not found.</p></body></html>"
                    );
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::HtmlTitleUpper => {
                    let up = path.to_ascii_uppercase();
                    let body =
                        format!("<html><head><title>404 NOT FOUND: {up}</title></head></html>");
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::PlainCut => {
                    // The path percent-encoded (no `/rest/` shape left), placed so a 120-char
                    // snippet ends inside the webhook code.
                    let enc = path.replace('/', "%2F");
                    let pad = "x".repeat(120usize.saturating_sub(30 + "Not found: ".len()));
                    let body = format!("{pad}Not found: {enc}");
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Page::Redirect => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other_port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            },
            Arc::new(AtomicUsize::new(0)),
        );
        EchoServer {
            port,
            redirect_hits,
        }
    }
}
