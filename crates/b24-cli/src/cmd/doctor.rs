//! `b24 doctor`: diagnose configuration, connectivity, auth and limits.
//!
//! Output: the JSON report always goes to stdout (so an agent can parse it without a flag), and
//! each finding with its fix goes to stderr as text. Exit 0 when nothing failed (warnings are
//! allowed), 2 when a check failed. Every message is passed through the redactor built from the
//! configuration's secrets: no webhook code, token or client secret is ever printed.

use std::path::Path;

use serde_json::{Value, json};

use crate::exit;
use crate::globals::Globals;

mod diagnose;
mod probe;

use probe::probe;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints a JSON report on stdout ({\"ok\": bool, \"checks\": [{\"name\", \"status\", \"detail\", \"fix\"}]})
and the findings with their fixes on stderr. Exit code 0 if no check failed, 2 otherwise.

Examples:
  b24 doctor
  b24 doctor --method crm.deal.list     # also check that this method works with this auth")]
pub struct Args {
    /// Also try this (read) method and explain its error, if any.
    #[arg(long, value_name = "METHOD")]
    pub method: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: name, status, detail, suggested fix, machine-readable code.
type Check = (String, Status, String, Option<String>, Option<String>);

struct Report {
    checks: Vec<Check>,
    secrets: Vec<String>,
}

impl Report {
    fn add(&mut self, name: &str, st: Status, detail: impl Into<String>, fix: Option<String>) {
        self.add_coded(name, st, detail, fix, None)
    }

    fn add_coded(
        &mut self,
        name: &str,
        st: Status,
        detail: impl Into<String>,
        fix: Option<String>,
        code: Option<String>,
    ) {
        let detail = self.redact(&detail.into());
        let fix = fix.map(|f| self.redact(&f));
        self.checks.push((name.to_string(), st, detail, fix, code));
    }

    fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for sec in &self.secrets {
            if sec.len() >= 4 {
                out = out.replace(sec.as_str(), "[redacted]");
            }
        }
        out
    }
}

fn mode_of(p: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// Mistakes visible in the raw settings before any request (they may also make the config fail).
fn lint_raw(get: &dyn Fn(&str) -> Option<String>, r: &mut Report) {
    if let Some(code) = get("B24_WEBHOOK_CODE")
        && let Some((first, _)) = code.split_once('/')
    {
        let digits = first.chars().all(|c| c.is_ascii_digit()) && !first.is_empty();
        r.add(
            "webhook_code",
            Status::Fail,
            if digits {
                format!("B24_WEBHOOK_CODE still carries its user id prefix (`{first}/…`)")
            } else {
                "B24_WEBHOOK_CODE contains a `/`".to_string()
            },
            Some(format!(
                "put only the part after `{first}/` in B24_WEBHOOK_CODE and {first} in B24_WEBHOOK_USER_ID \
                 — or set the whole URL in B24_WEBHOOK_URL"
            )),
        );
    }
    if let Some(u) = get("B24_WEBHOOK_URL")
        && let Ok(parsed) = url::Url::parse(u.trim())
    {
        let segs: Vec<String> = parsed
            .path_segments()
            .map(|s| s.filter(|x| !x.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let ok_shape =
            segs.len() >= 3 && segs[0] == "rest" && segs[1].chars().all(|c| c.is_ascii_digit());
        if !ok_shape {
            r.add(
                "webhook_url",
                Status::Fail,
                "B24_WEBHOOK_URL looks cut short: it needs /rest/<user_id>/<code>/",
                Some(
                    "copy the whole inbound webhook URL from the portal, including the code".into(),
                ),
            );
        }
    }
    for key in ["B24_WEBHOOK_URL", "B24_DOMAIN", "B24_OAUTH_TOKEN_URL"] {
        if let Some(v) = get(key)
            && let Some(rest) = v.trim().strip_prefix("http://")
        {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host_only = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            let host_only = host_only.trim_start_matches('[').trim_end_matches(']');
            if !b24::config::is_loopback_host(host_only) {
                r.add(
                    "transport",
                    Status::Fail,
                    format!("{key} uses http:// to a non-loopback host ({host_only}): credentials would travel in clear text"),
                    Some("use https:// (plain http is only allowed for 127.0.0.1/localhost, e.g. the sandbox)".into()),
                );
            }
        }
    }
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let mut r = Report {
        checks: Vec::new(),
        secrets: Vec::new(),
    };
    let lookup = g.lookup()?;
    for k in [
        "B24_WEBHOOK_CODE",
        "B24_ACCESS_TOKEN",
        "B24_REFRESH_TOKEN",
        "B24_CLIENT_SECRET",
    ] {
        if let Some(v) = lookup(k) {
            r.secrets.push(v.trim().to_string());
            if let Some((_, tail)) = v.split_once('/') {
                r.secrets.push(tail.trim().to_string());
            }
        }
    }
    if let Some(u) = lookup("B24_WEBHOOK_URL")
        && let Ok(p) = url::Url::parse(u.trim())
        && let Some(segs) = p.path_segments()
    {
        let segs: Vec<&str> = segs.filter(|s| !s.is_empty()).collect();
        if segs.len() >= 3 {
            r.secrets.push(segs[2].to_string());
        }
    }
    lint_raw(&lookup, &mut r);

    // Directories.
    let state = g.state_dir();
    let config_dir = g.config_dir();
    r.add(
        "config_dir",
        Status::Ok,
        format!(
            "{} ({})",
            config_dir.display(),
            if config_dir.join("config.toml").exists() {
                "config.toml present"
            } else {
                "no config.toml; settings come from the environment"
            }
        ),
        None,
    );
    if state.exists() {
        let mode = mode_of(&state);
        match mode {
            Some(m) if m & 0o077 != 0 => r.add(
                "state_dir",
                Status::Warn,
                format!(
                    "{} is mode {m:o}: others can read tokens and audit records",
                    state.display()
                ),
                Some(format!("chmod 700 {}", state.display())),
            ),
            _ => r.add(
                "state_dir",
                Status::Ok,
                format!("{} (private)", state.display()),
                None,
            ),
        }
        let mut loose = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&state) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("tokens-")
                    && name.ends_with(".json")
                    && let Some(m) = mode_of(&e.path())
                    && m & 0o077 != 0
                {
                    loose.push(format!("{name} ({m:o})"));
                }
            }
        }
        if loose.is_empty() {
            r.add("secret_files", Status::Ok, "token files are 0600", None);
        } else {
            r.add(
                "secret_files",
                Status::Fail,
                format!("token files readable by others: {}", loose.join(", ")),
                Some(format!("chmod 600 {}/tokens-*.json", state.display())),
            );
        }
    } else {
        r.add(
            "state_dir",
            Status::Ok,
            format!("{} (will be created 0700 on first use)", state.display()),
            None,
        );
    }

    // Policy: the effective rules and where each layer came from.
    let policy = match crate::exec::resolve(g) {
        Ok(res) => {
            let sources: Vec<String> = res
                .policy
                .layers
                .iter()
                .filter(|l| {
                    l.kind == b24_guard::policy::LayerKind::Operator
                        || l.source != "flags and environment"
                        || l.rules.read_only
                        || !l.rules.deny.is_empty()
                        || !l.rules.allow.is_empty()
                        || l.rules.packs.is_some()
                        || l.rules.max_writes_per_hour.is_some()
                        || l.rules.require_plan_for_writes
                        || l.rules.strict
                })
                .map(|l| {
                    format!(
                        "{} ({})",
                        l.source,
                        if l.kind == b24_guard::policy::LayerKind::Operator {
                            "operator"
                        } else {
                            "caller, can only narrow"
                        }
                    )
                })
                .collect();
            let paths = b24_guard::sources::OperatorPaths::fixed();
            r.add(
                "policy",
                Status::Ok,
                format!(
                    "operator files read from {} and {}; layers in force: {}; guard records in {}{}",
                    paths.system.display(),
                    paths.user.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(no home directory)".into()),
                    if sources.is_empty() { "none (every documented method allowed with its confirmation)".to_string() } else { sources.join("; ") },
                    res.guard_dir.display(),
                    if res.guard_dir_fixed { " (fixed by the operator policy)" } else { "" },
                ),
                None,
            );
            let mut d = res.policy.describe();
            d["operator_files"] = json!([paths.system, paths.user]);
            d["guard_dir"] = json!(res.guard_dir);
            d["guard_dir_fixed"] = json!(res.guard_dir_fixed);
            Some(d)
        }
        Err(e) => {
            r.add(
                "policy",
                Status::Fail,
                crate::exit::chain_text(&e),
                Some("fix the file and line named above; until then every call is refused".into()),
            );
            None
        }
    };

    // Configuration.
    let cfg = match g.config() {
        Ok(c) => Some(c),
        Err(e) => {
            let msg = e.to_string();
            if !r.checks.iter().any(|c| c.1 == Status::Fail) {
                r.add(
                    "config",
                    Status::Fail,
                    msg,
                    Some("set B24_WEBHOOK_URL=https://<portal>/rest/<user_id>/<code>/ (or OAuth: `b24 auth login`); try `b24 demo` to see a working setup".into()),
                );
            } else {
                r.add("config", Status::Fail, msg, None);
            }
            None
        }
    };
    if let Some(cfg) = &cfg {
        r.secrets.extend(cfg.secrets());
        let (kind, webhook) = match &cfg.auth {
            b24::config::Auth::Webhook { .. } => ("webhook", true),
            _ => ("oauth", false),
        };
        r.add(
            "config",
            Status::Ok,
            format!("{kind} auth, portal {} ({})", cfg.portal, cfg.base_url),
            None,
        );
        if !webhook {
            let tf = cfg.token_file();
            if tf.exists() {
                r.add(
                    "oauth_tokens",
                    Status::Ok,
                    format!("stored pair in {}", tf.display()),
                    None,
                );
            }
        }
        probe(cfg, webhook, &args, g, &mut r).await;
    }

    let failed = r.checks.iter().any(|c| c.1 == Status::Fail);
    let warned = r.checks.iter().any(|c| c.1 == Status::Warn);
    if !g.quiet || failed {
        for (name, st, detail, fix, _) in &r.checks {
            let tag = match st {
                Status::Ok => "  ok ",
                Status::Warn => " WARN",
                Status::Fail => " FAIL",
            };
            crate::errln!("{tag}  {name}: {detail}");
            if let Some(f) = fix
                && *st != Status::Ok
            {
                crate::errln!("        fix: {f}");
            }
        }
        crate::errln!(
            "b24 doctor: {}",
            if failed {
                "problems found (see FAIL above)"
            } else if warned {
                "usable, with warnings"
            } else {
                "all checks passed"
            }
        );
    }
    let checks: Vec<Value> = r
        .checks
        .iter()
        .map(|(n, s, d, f, c)| json!({"name": n, "status": s.as_str(), "detail": d, "fix": f, "code": c}))
        .collect();
    let report = json!({"ok": !failed, "warnings": warned, "checks": checks, "policy": policy});
    crate::outln!("{}", r.redact(&serde_json::to_string_pretty(&report)?))?;
    Ok(if failed { exit::USAGE } else { exit::OK })
}
