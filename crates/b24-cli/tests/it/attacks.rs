//! The attack suite (issue 12): a hostile agent tries to get past the gate through the CLI and
//! through `b24 mcp`. Every attempt is one row of a table; each row runs through both front ends
//! where that makes sense and asserts, from the sandbox's own request counters, what reached the
//! portal. The table is printed at the end (`cargo test -p b24-cli --test it attacks -- --nocapture`); a row
//! that gets through is listed as a failure with its reproduction, and the test fails once at
//! the end so the whole table is always printed.
//!
//! One sandbox and one MCP session per policy setup are reused, so the suite stays fast.
//!
//! The suite's sections are in `attacks/`, one file per kind of attack; `attack_suite` below
//! runs them in order against the shared setup.

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

/// What every section of the suite shares: the sandbox, the base setup (a config-dir policy
/// denying crm.lead.delete) with its MCP session, and the credentials never to be printed.
#[derive(Clone, Copy)]
struct Suite<'a> {
    sb: &'a Sandbox,
    env: &'a Env,
    mcp: &'a Plain,
    secrets: &'a [String],
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
    let s = Suite {
        sb: &sb,
        env: &env,
        mcp: &mcp,
        secrets: &secrets,
    };

    spellings::method_names_and_batch_keys(s, &mut t).await;
    spellings::batch_commands(s, &mut t).await;
    read_only::read_only_tools(s, &mut t).await;
    spellings::plans(s, &mut t).await;
    confirmation::destructive_calls_need_the_person(s, &mut t).await;
    policy_sources::placement(s, &mut t).await;
    policy_sources::env_files_and_profiles(s, &mut t).await;
    policy_sources::unparsable_policy(s, &mut t).await;
    limits::raw_batch_budget(s, &mut t).await;
    limits::caller_budget_and_a_fresh_state_dir(s, &mut t).await;
    limits::a_second_spelling_of_clear(s, &mut t).await;
    audit::audit_file_setting_is_ignored(s, &mut t).await;
    echo_pages::secrets_in_error_pages(&mut t).await;
    audit::secrets_handed_in_stay_out_of_the_audit_log(s, &mut t).await;
    audit::unwritable_records_stop_the_write(s, &mut t).await;
    confirmation::a_modern_client_cannot_stand_in_for_the_person(s, &mut t).await;
    audit::a_closed_pipe(s, &mut t).await;

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

mod audit;
mod confirmation;
mod echo_pages;
mod limits;
mod policy_sources;
mod read_only;
mod spellings;
