//! `b24 demo`: a guided tour against an embedded sandbox portal.
//!
//! The demo starts the emulated portal in this process and then runs the real `b24` commands
//! (this same executable, as child processes) against it, so what the newcomer sees is exactly
//! what those commands do — the same config resolution, limiter, guarded exec path, plans, audit,
//! export and worker — not a separate happy-path imitation. The children get a clean
//! environment: only the sandbox's settings and temp (or `--state-dir`) directories, never the
//! user's real `B24_*` variables, so the demo cannot touch a real portal. No network is needed.
//!
//! Narration goes to stderr; stdout gets one JSON summary at the end. Exit 0 when every step
//! behaved as expected (including the delete being refused).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::{Value, json};

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs offline: starts an emulated portal in this process and walks through a read probe, a
planned write, a refused delete, a batch, a bulk export and an event handled by the worker,
printing the equivalent `b24` command for each step. Prints a JSON summary on stdout.

Uses a temporary state directory unless --state-dir (or B24_STATE_DIR) is given.

Example:
  b24 demo")]
pub struct Args {
    /// Leads to seed in the embedded portal (the export step reads them all).
    #[arg(long, default_value_t = 3000)]
    pub leads: usize,
}

/// One child run's outcome.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Demo {
    exe: PathBuf,
    /// Children run here, so the handler command can use short relative paths.
    work: PathBuf,
    env: Vec<(String, String)>,
    quiet: bool,
    step: usize,
    total: usize,
}

impl Demo {
    fn say(&self, msg: &str) {
        if !self.quiet {
            crate::errln!("{msg}");
        }
    }

    fn header(&mut self, title: &str, why: &str) {
        self.step += 1;
        self.say(&format!("\n[{}/{}] {title}", self.step, self.total));
        self.say(&format!("      {why}"));
    }

    fn show_cmd(&self, args: &[&str]) {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains([' ', '{', '"', '$', '[']) {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        self.say(&format!("      $ b24 {}", shown.join(" ")));
    }

    /// Run `b24 ARGS` with the demo's environment; stdout captured (or sent to `out_file`).
    async fn run(
        &self,
        args: &[&str],
        out_file: Option<&Path>,
        live_stderr: bool,
    ) -> anyhow::Result<Run> {
        self.show_cmd(args);
        let mut c = tokio::process::Command::new(&self.exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("B24_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .current_dir(&self.work)
            .stdin(Stdio::null());
        match out_file {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", p.display())))?;
                c.stdout(Stdio::from(f));
            }
            None => {
                c.stdout(Stdio::piped());
            }
        }
        if live_stderr && !self.quiet {
            c.stderr(Stdio::inherit());
        } else {
            c.stderr(Stdio::piped());
        }
        // `spawn` + `wait_with_output` keeps the stdio set above (`output()` would pipe both).
        let out = c
            .spawn()
            .map_err(|e| {
                Exit::new(
                    exit::USAGE,
                    format!("cannot run {}: {e}", self.exe.display()),
                )
            })?
            .wait_with_output()
            .await?;
        Ok(Run {
            code: out.status.code().unwrap_or(exit::INTERRUPTED),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn indent(&self, text: &str, max_lines: usize) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for l in lines.iter().take(max_lines) {
            self.say(&format!("      │ {l}"));
        }
        if lines.len() > max_lines {
            self.say(&format!(
                "      │ … ({} more lines)",
                lines.len() - max_lines
            ));
        }
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// A step that did not go as the tour expects: stop with the child's own message.
fn step_failed(what: &str, r: &Run) -> anyhow::Error {
    Exit::new(
        exit::PARTIAL,
        format!(
            "demo step `{what}` failed (exit {}): {}",
            r.code,
            r.stderr.lines().last().unwrap_or("")
        ),
    )
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let started = Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| Exit::new(exit::USAGE, format!("cannot find the b24 executable: {e}")))?;
    let tmp = tempdir()?;
    let state_dir = g.state_dir.clone().unwrap_or_else(|| tmp.join("state"));
    let config_dir = tmp.join("config");
    let work = tmp.join("work");
    for d in [&config_dir, &work] {
        std::fs::create_dir_all(d)
            .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", d.display())))?;
    }
    b24::auth::ensure_private_dir(&state_dir).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;

    if !g.quiet {
        crate::errln!(
            "b24 demo — a tour of b24 against an emulated Bitrix24 portal (offline, nothing real is touched)"
        );
    }
    let sb = b24_sandbox::start(b24_sandbox::SandboxConfig {
        seed_leads: args.leads,
        ..Default::default()
    })
    .await
    .map_err(|e| {
        Exit::new(
            exit::USAGE,
            format!("cannot start the embedded portal: {e}"),
        )
    })?;
    let info = sb.info().clone();
    if !g.quiet {
        crate::errln!(
            "      started an emulated portal at {} with {} leads (same limits and errors as a real one)",
            info.base_url,
            args.leads
        );
        crate::errln!(
            "      state dir (plans, audit log, event queue): {}",
            state_dir.display()
        );
    }
    let env: Vec<(String, String)> = vec![
        ("B24_AUTH_MODE".into(), "oauth".into()),
        ("B24_DOMAIN".into(), info.base_url.clone()),
        ("B24_CLIENT_ID".into(), info.client_id.clone()),
        ("B24_CLIENT_SECRET".into(), info.client_secret.clone()),
        ("B24_ACCESS_TOKEN".into(), info.access_token.clone()),
        ("B24_REFRESH_TOKEN".into(), info.refresh_token.clone()),
        ("B24_OAUTH_TOKEN_URL".into(), info.oauth_token_url.clone()),
        ("B24_STATE_DIR".into(), state_dir.display().to_string()),
        ("B24_CONFIG_DIR".into(), config_dir.display().to_string()),
    ];
    let mut d = Demo {
        exe,
        work: work.clone(),
        env,
        quiet: g.quiet,
        step: 0,
        total: 6,
    };
    let result = tour(&mut d, &work, args.leads).await;
    sb.shutdown().await;
    // The temp dir holds the work files and config (and the state unless --state-dir was given).
    let _ = std::fs::remove_dir_all(&tmp);
    let mut summary = result?;
    summary["portal"] = json!(info.base_url);
    summary["state_dir"] = if g.state_dir.is_some() {
        json!(state_dir)
    } else {
        json!(null) // a temporary directory, removed below
    };
    summary["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    if !g.quiet {
        crate::errln!(
            "\nDone in {:.1} s. Next: `b24 doctor` with your portal (B24_WEBHOOK_URL=https://<portal>/rest/<user>/<code>/),\n\
             `b24 methods --search lead`, `b24 describe crm.lead.add`, or `b24 sandbox` for a portal you can keep.",
            started.elapsed().as_secs_f64()
        );
    }
    crate::outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(exit::OK)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("b24-demo-{}", uuid::Uuid::new_v4().simple()));
    b24::auth::ensure_private_dir(&p).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    Ok(p)
}

async fn tour(d: &mut Demo, work: &Path, leads: usize) -> anyhow::Result<Value> {
    let mut steps = Vec::new();

    // 1. Read probe.
    d.header(
        "A read probe",
        "Start every task with a read: it proves the address and credentials and shows real data.",
    );
    let r = d.run(&["call", "user.current"], None, false).await?;
    if r.code != 0 {
        return Err(step_failed("call user.current", &r));
    }
    let me = parse(&r.stdout);
    d.say(&format!(
        "      → you are user {} ({} {})",
        me["ID"].as_str().unwrap_or("?"),
        me["NAME"].as_str().unwrap_or(""),
        me["LAST_NAME"].as_str().unwrap_or("")
    ));
    let args = [
        "list",
        "crm.lead.list",
        "--params",
        r#"{"select":["ID","TITLE"],"order":{"ID":"ASC"}}"#,
    ];
    let r = d.run(&args, None, false).await?;
    let first_page = if r.code == 0 {
        let v = parse(&r.stdout);
        let n = v
            .get("items")
            .unwrap_or(&v)
            .as_array()
            .map(|a| a.len())
            .unwrap_or_else(|| r.stdout.lines().count());
        d.say(&format!(
            "      → first page: {n} leads (pages hold 50; `b24 export` reads them all)"
        ));
        n
    } else {
        let r = d.run(&["call", "crm.lead.list"], None, false).await?;
        if r.code != 0 {
            return Err(step_failed("call crm.lead.list", &r));
        }
        let n = parse(&r.stdout).as_array().map(|a| a.len()).unwrap_or(0);
        d.say(&format!("      → first page: {n} leads"));
        n
    };
    steps.push(
        json!({"step": "read_probe", "ok": true, "user_id": me["ID"], "first_page": first_page}),
    );

    // 2. Planned write.
    d.header(
        "A planned write",
        "Writes are planned first (nothing is sent), reviewed, then applied exactly once.",
    );
    let params = r#"{"fields":{"TITLE":"Demo lead from b24","NAME":"Ada","PHONE":[{"VALUE":"+15550100","VALUE_TYPE":"WORK"}]}}"#;
    let r = d
        .run(&["plan", "crm.lead.add", "--params", params], None, false)
        .await?;
    if r.code != 0 {
        return Err(step_failed("plan crm.lead.add", &r));
    }
    let plan = parse(&r.stdout);
    let plan_id = plan["id"].as_str().unwrap_or_default().to_string();
    d.say(&format!(
        "      → plan {plan_id}: risk {}, {}",
        plan["risk"].as_str().unwrap_or("write"),
        "nothing has been sent yet"
    ));
    let r = d
        .run(&["apply", &plan_id, "--confirm-write"], None, false)
        .await?;
    if r.code != 0 {
        return Err(step_failed("apply", &r));
    }
    let applied = parse(&r.stdout);
    let new_id = applied
        .get("result")
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| applied.clone());
    d.say(&format!(
        "      → applied: new lead id {new_id}; applying the same plan again would be refused"
    ));
    let again = d
        .run(&["apply", &plan_id, "--confirm-write"], None, false)
        .await?;
    d.say(&format!(
        "      → second apply: exit {} ({})",
        again.code,
        again
            .stderr
            .lines()
            .last()
            .unwrap_or("")
            .trim_start_matches("b24: error: ")
    ));
    steps.push(json!({"step": "planned_write", "ok": true, "plan_id": plan_id, "lead_id": new_id, "reapply_exit": again.code}));

    // 3. Guarded delete.
    d.header(
        "A guarded delete",
        "Destructive methods need an explicit confirmation; without it b24 refuses before any request.",
    );
    let r = d
        .run(
            &["call", "crm.lead.delete", "--params", r#"{"id":1}"#],
            None,
            false,
        )
        .await?;
    if r.code != exit::POLICY {
        return Err(step_failed("call crm.lead.delete (expected a refusal)", &r));
    }
    d.say(&format!("      → refused (exit {}):", r.code));
    d.indent(&r.stderr, 4);
    steps.push(json!({"step": "guarded_delete", "ok": true, "refused": true, "exit": r.code}));

    // 4. Batch.
    d.header(
        "A batch",
        "Up to 50 commands per request; later commands can use earlier results via $result[...].",
    );
    let args = [
        "batch",
        "--cmd",
        r#"{"key":"me","method":"user.current"}"#,
        "--cmd",
        r#"{"key":"mine","method":"crm.lead.list","params":{"filter":{"ASSIGNED_BY_ID":"$result[me][ID]"},"select":["ID"]}}"#,
        "--cmd",
        r#"{"key":"one","method":"crm.lead.get","params":{"id":1}}"#,
    ];
    let r = d.run(&args, None, false).await?;
    if r.code != 0 {
        return Err(step_failed("batch", &r));
    }
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(parse)
        .filter(|v| !v.is_null())
        .collect();
    let ok = lines.iter().filter(|v| v["status"] == "ok").count();
    let mine = lines
        .iter()
        .find(|v| v["key"] == "mine")
        .and_then(|v| v["result"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    d.say(&format!(
        "      → 3 commands in one request: {ok} ok; `mine` used $result[me][ID] and got {mine} leads"
    ));
    let outcomes = ok;
    steps.push(json!({"step": "batch", "ok": true, "commands": 3, "results": outcomes}));

    // 5. Export.
    d.header(
        "A bulk export",
        "Every lead as NDJSON, read by ID ranges in parallel, 50 pages per request, within the rate limit.",
    );
    let out = work.join("leads.ndjson");
    let t = Instant::now();
    let r = d
        .run(
            &["export", "crm.lead.list", "--select", "ID,TITLE,STATUS_ID"],
            Some(&out),
            true,
        )
        .await?;
    if r.code != 0 {
        return Err(step_failed("export", &r));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let count = text.lines().count();
    if let Some(first) = text.lines().next() {
        d.say(&format!("      │ {first}"));
    }
    d.say(&format!(
        "      → {count} leads exported in {:.1} s (b24 export crm.lead.list > leads.ndjson)",
        t.elapsed().as_secs_f64()
    ));
    if count < leads {
        return Err(Exit::new(
            exit::PARTIAL,
            format!("demo step `export` returned {count} leads, expected at least {leads}"),
        ));
    }
    steps.push(json!({"step": "export", "ok": true, "items": count}));

    // 6. Events.
    d.header(
        "An event handled by the worker",
        "Offline events queue up in the portal; the worker pulls them into a durable local queue and runs your handler.",
    );
    let r = d
        .run(
            &["events", "bind", "ONCRMLEADUPDATE", "--offline"],
            None,
            false,
        )
        .await?;
    if r.code != 0 {
        return Err(step_failed("events bind", &r));
    }
    let update = r#"{"id":1,"fields":{"TITLE":"Changed by the b24 demo"}}"#;
    let r = d
        .run(
            &[
                "call",
                "crm.lead.update",
                "--params",
                update,
                "--confirm-write",
            ],
            None,
            false,
        )
        .await?;
    if r.code != 0 {
        return Err(step_failed("call crm.lead.update", &r));
    }
    d.say("      → lead 1 changed; the portal recorded an ONCRMLEADUPDATE event");
    let handled = work.join("handled");
    std::fs::create_dir_all(&handled)?;
    let handler = "cat > \"handled/$B24_EVENT_KEY.json\"".to_string();
    let r = d
        .run(&["worker", "--exec", &handler, "--once"], None, false)
        .await?;
    if r.code != 0 {
        return Err(step_failed("worker", &r));
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&handled)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let event_name = files
        .first()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| parse(&s))
        .and_then(|v| {
            v.get("event")
                .or_else(|| v.get("EVENT_NAME"))
                .and_then(|e| e.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "ONCRMLEADUPDATE".into());
    if files.is_empty() {
        return Err(step_failed("worker (no event reached the handler)", &r));
    }
    d.say(&format!(
        "      → the handler ran for {} event(s) ({event_name}); each is recorded so it runs once",
        files.len()
    ));
    steps.push(
        json!({"step": "event_worker", "ok": true, "handled": files.len(), "event": event_name}),
    );

    Ok(json!({"ok": true, "steps": steps}))
}
