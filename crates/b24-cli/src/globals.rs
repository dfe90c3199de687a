//! Flags shared by every command, and turning them into a library `Config` / `Client`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::exit::{self, Exit};

mod legacy {
    //! The original Python skill's settings (see docs/migrating-from-the-python-skill.md):
    //! never silently. A variable b24 does not read is named in a warning with what to do
    //! instead; one that has a safe meaning is translated (`B24_RATE_LIMITER=noop` → `off`);
    //! the original's JSON rate-limiter file is ignored (b24 keeps its own SQLite state) rather
    //! than failing every call with "file is not a database". None of this weakens the guard:
    //! `B24_AUDIT_FILE`, `B24_PLAN_FILE` and `B24_IDEMPOTENCY_FILE` never move the records that
    //! decide whether a write may happen.

    use std::sync::Once;

    /// Variables b24 does not read, and what to do instead.
    const IGNORED: &[(&str, &str)] = &[
        (
            "B24_AUDIT_FILE",
            "the audit log cannot be moved or turned off by a caller; it stays in the state dir (or the operator's guard_dir): `b24 audit path` shows where",
        ),
        (
            "B24_PLAN_FILE",
            "plans live in the guard store (state dir or the operator's guard_dir): `b24 plan list`",
        ),
        (
            "B24_IDEMPOTENCY_FILE",
            "idempotency records live in the guard store (state dir or guard_dir); ask for replay per call with --idempotency-key KEY or --idempotent",
        ),
        (
            "B24_IDEMPOTENCY_TTL_SEC",
            "idempotency records are kept by b24 itself; replay is asked for per call (--idempotency-key, --idempotent)",
        ),
        (
            "B24_RATE_LIMITER_TTL_SEC",
            "b24's limiter state needs no eviction",
        ),
        (
            "B24_RUN_INTEGRATION",
            "a test switch of the original; b24's tests run against `b24 sandbox`",
        ),
        (
            "B24_SMOKE_WRITE",
            "a test switch of the original; b24's tests run against `b24 sandbox`",
        ),
    ];

    static WARNED: Once = Once::new();

    /// Translations decided once per process.
    pub struct Compat {
        drop_limiter_file: bool,
        limiter_noop: bool,
    }

    /// The original's limiter file: JSON (by name or content), not b24's SQLite database.
    fn is_legacy_limiter_file(path: &str) -> bool {
        if path.to_ascii_lowercase().ends_with(".json") {
            return true;
        }
        use std::io::Read;
        let mut head = [0u8; 16];
        match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
            Ok(0) | Err(_) => false,
            Ok(n) => head[..n] != b"SQLite format 3\0"[..n],
        }
    }

    impl Compat {
        pub fn read(raw: &dyn Fn(&str) -> Option<String>) -> Compat {
            let mut notes = Vec::new();
            for (k, what) in IGNORED {
                if raw(k).is_some() {
                    notes.push(format!("{k} is a setting of the original Python skill and is not read: {what}. Remove it."));
                }
            }
            let limiter_noop =
                raw("B24_RATE_LIMITER").is_some_and(|v| v.eq_ignore_ascii_case("noop"));
            if limiter_noop {
                notes.push("B24_RATE_LIMITER=noop (the original's spelling) is read as `off`; write `off`.".into());
            }
            let drop_limiter_file =
                raw("B24_RATE_LIMITER_FILE").is_some_and(|p| is_legacy_limiter_file(&p));
            if drop_limiter_file {
                notes.push("B24_RATE_LIMITER_FILE names the original's JSON rate-limiter file, which b24 does not read: it is ignored and b24 keeps its own state (limiter.db in the state dir). Remove the variable, or point it at a new .db path.".into());
            }
            WARNED.call_once(|| {
                for n in &notes {
                    crate::errln!(
                        "b24: warning: {n} (see docs/migrating-from-the-python-skill.md)"
                    );
                }
            });
            Compat {
                drop_limiter_file,
                limiter_noop,
            }
        }

        pub fn get(&self, k: &str, v: Option<String>) -> Option<String> {
            match k {
                "B24_RATE_LIMITER_FILE" if self.drop_limiter_file => None,
                "B24_RATE_LIMITER" if self.limiter_noop => Some("off".into()),
                _ => v,
            }
        }
    }
}

/// Global options (they may be given before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Globals {
    /// Load environment variables from this .env file first (never loaded implicitly).
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Profile name in the config dir's `config.toml`.
    #[arg(long, global = true, env = "B24_PROFILE")]
    pub profile: Option<String>,
    /// Configuration directory: profiles (`config.toml`) and a `policy.toml` that can only
    /// narrow the operator's (`/etc/b24/policy.toml`, `~/.config/b24/policy.toml`).
    #[arg(long, global = true, env = "B24_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// State directory (tokens, limiter, plans, idempotency records, audit log, queue). When an
    /// operator policy exists, plans, idempotency records, the write counter and the audit log
    /// live in its `guard_dir` instead.
    #[arg(long, global = true, env = "B24_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Hide progress bars and informational messages on stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` also works.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Act on one portal the app is installed on (domain or member id, see `b24 portals
    /// list`): its address and OAuth pair come from the installation the receiver recorded.
    /// Before or after the command (`b24 --portal X call …`, `b24 call --portal X …`), except
    /// under `b24 auth`, whose `--portal HOST` names the portal to log in to.
    #[arg(
        long = "portal",
        id = "installed_portal",
        value_name = "DOMAIN|MEMBER_ID"
    )]
    pub portal: Option<String>,
    #[command(flatten)]
    pub policy: crate::policy_args::PolicyArgs,
    /// `--env-file` and profile variables, read once per process (the gate and the
    /// configuration both need them).
    #[arg(skip)]
    vars_cache: std::sync::OnceLock<Vec<(String, HashMap<String, String>)>>,
}

/// Logs go to stderr only (stdout is for data), redacted line by line (see [`crate::logs`]).
pub fn init_tracing(g: &Globals) {
    let default = match g.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person at a terminal: in a pipe or a log file (an agent host
    // reading stderr) they are noise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logs::MakeRedacted)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

impl Globals {
    /// The configuration directory: `--config-dir`, `B24_CONFIG_DIR`, or `~/.config/b24`.
    pub fn config_dir(&self) -> PathBuf {
        self.config_dir
            .clone()
            .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("b24")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/b24")))
            .unwrap_or_else(|| PathBuf::from(".b24/config"))
    }

    /// The state directory: `--state-dir`, `B24_STATE_DIR`, or `~/.local/state/b24`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("b24")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/b24")))
            .unwrap_or_else(|| PathBuf::from(".b24/state"))
    }

    /// The variables of `--env-file` and of the selected profile, each labelled with where it
    /// came from (they feed both the connection settings and the policy).
    pub fn caller_vars(&self) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
        if let Some(v) = self.vars_cache.get() {
            return Ok(v.clone());
        }
        let layers = self.read_caller_vars()?;
        let _ = self.vars_cache.set(layers.clone());
        Ok(layers)
    }

    fn read_caller_vars(&self) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
        let mut layers = Vec::new();
        if let Some(path) = &self.env_file {
            let mut file_vars: HashMap<String, String> = HashMap::new();
            let iter = dotenvy::from_path_iter(path).map_err(|e| {
                Exit::new(exit::USAGE, format!("--env-file {}: {e}", path.display()))
            })?;
            for item in iter {
                let (k, v) = item.map_err(|e| {
                    Exit::new(exit::USAGE, format!("--env-file {}: {e}", path.display()))
                })?;
                file_vars.insert(k, v);
            }
            layers.push((format!("--env-file {}", path.display()), file_vars));
        }
        let cfg_path = self.config_dir().join("config.toml");
        if let Ok(text) = std::fs::read_to_string(&cfg_path) {
            let doc: toml::Table = text
                .parse()
                .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", cfg_path.display())))?;
            let name = self.profile.clone().or_else(|| {
                doc.get("default_profile")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
            if let Some(name) = name {
                let table = doc
                    .get("profiles")
                    .and_then(|p| p.get(&name))
                    .and_then(|p| p.as_table())
                    .ok_or_else(|| {
                        Exit::new(
                            exit::USAGE,
                            format!("profile `{name}` is not in {}", cfg_path.display()),
                        )
                    })?;
                let mut profile_vars: HashMap<String, String> = HashMap::new();
                for (k, v) in table {
                    let key = if k.to_ascii_uppercase().starts_with("B24_") {
                        k.to_ascii_uppercase()
                    } else {
                        format!("B24_{}", k.to_ascii_uppercase())
                    };
                    let val = match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    profile_vars.insert(key, val);
                }
                layers.push((
                    format!("profile {name} in {}", cfg_path.display()),
                    profile_vars,
                ));
            }
        } else if let Some(name) = &self.profile {
            return Err(Exit::new(
                exit::USAGE,
                format!("--profile {name}: {} does not exist", cfg_path.display()),
            ));
        }
        Ok(layers)
    }

    /// Look up a `B24_*` setting: env > `--env-file` > profile in `config.toml` (keys may be
    /// written `B24_WEBHOOK_URL` or `webhook_url`). Settings of the original Python skill are
    /// translated or ignored here, each with a warning (see [`legacy`]).
    pub fn lookup(&self) -> anyhow::Result<impl Fn(&str) -> Option<String> + use<>> {
        let layers = self.caller_vars()?;
        let raw = move |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| layers.iter().find_map(|(_, m)| m.get(k).cloned()))
        };
        let compat = legacy::Compat::read(&raw);
        Ok(move |k: &str| compat.get(k, raw(k)))
    }

    /// Resolve the configuration (flags > env > profile file > defaults).
    pub fn config(&self) -> anyhow::Result<b24::Config> {
        if self.portal.is_some() {
            return crate::cmd::portals::resolved_config();
        }
        let lookup = self.lookup()?;
        let cfg = b24::Config::from_lookup(&lookup, self.state_dir())
            .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
        // Every message b24 prints passes the one redactor; it must know these.
        b24_guard::redact::remember(cfg.secrets());
        Ok(cfg)
    }

    /// The process's client (built once).
    pub async fn client(&self) -> anyhow::Result<b24::Client> {
        let c = crate::exec::CLIENT
            .get_or_try_init(|| async {
                if let Some(key) = &self.portal {
                    return crate::cmd::portals::client(self, key).await;
                }
                let cfg = self.config()?;
                b24::auth::ensure_private_dir(&cfg.state_dir)
                    .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
                b24::Client::new(cfg).await.map_err(anyhow::Error::new)
            })
            .await?;
        Ok(c.clone())
    }
}

/// The flag `--portal DOMAIN|MEMBER_ID` may follow any subcommand but cannot be a clap
/// global: `auth login|status|logout` have their own `--portal HOST` (another meaning), and a
/// global would collide with it, or hand a login host to [`Globals::portal`]. So the parse
/// tree carries a hidden, local copy of it in every subcommand outside such a subtree, and
/// [`lift_portal`] moves the value where [`Globals`] reads it.
const PORTAL_ID: &str = "installed_portal";

/// The command tree `b24` parses with: the derived one plus the local `--portal` copies.
pub fn tree() -> clap::Command {
    use clap::CommandFactory;
    let cmd = crate::cmd::Cli::command();
    let Some(flag) = cmd
        .get_arguments()
        .find(|a| a.get_id() == PORTAL_ID)
        .map(|a| a.clone().hide(true))
    else {
        return cmd;
    };
    with_portal_flag(cmd, &flag)
}

/// Whether `cmd` or a command under it has a `--portal` flag of its own.
fn has_own_portal(cmd: &clap::Command) -> bool {
    cmd.get_arguments()
        .any(|a| a.get_long() == Some("portal") && a.get_id() != PORTAL_ID)
        || cmd.get_subcommands().any(has_own_portal)
}

fn with_portal_flag(mut cmd: clap::Command, flag: &clap::Arg) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|sc| !has_own_portal(sc))
        .map(|sc| sc.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |sc| with_portal_flag(sc.arg(flag.clone()), flag));
    }
    cmd
}

/// The `--portal` given after a subcommand, moved to the top level (see [`tree`]). Given
/// twice with different values is a usage error: which portal would be meant is a guess.
pub fn lift_portal(matches: &clap::ArgMatches, g: &mut Globals) -> Result<(), clap::Error> {
    let mut level = matches.subcommand();
    while let Some((_, m)) = level {
        if let Ok(Some(v)) = m.try_get_one::<String>(PORTAL_ID) {
            match &g.portal {
                Some(prev) if prev != v => {
                    return Err(command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--portal is given twice, as `{prev}` and as `{v}`"),
                    ));
                }
                _ => g.portal = Some(v.clone()),
            }
        }
        level = m.subcommand();
    }
    Ok(())
}

/// The command tree as `b24` parses it: the global flags (connection, state, policy, `-q`,
/// `-v`) are described once, in `b24 --help`. They still work before or after any subcommand,
/// but each subcommand's help lists only its own flags and points to `b24 --help` for the rest
/// (twenty guard flags repeated under `b24 completions --help` hid what that command takes).
pub fn command() -> clap::Command {
    let cmd = tree();
    // clap copies a global arg into a subcommand only where the subcommand has no arg of that
    // id: putting hidden copies there first keeps the flags working (the values still land in
    // the top level's matches) and out of the subcommands' help.
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    hide_in_subcommands(cmd, &globals)
}

fn hide_in_subcommands(mut cmd: clap::Command, globals: &[clap::Arg]) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |mut sc| {
            for a in globals {
                if !sc.get_arguments().any(|x| x.get_id() == a.get_id()) {
                    sc = sc.arg(a.clone());
                }
            }
            let after = sc
                .get_after_help()
                .map(|h| format!("{h}\n\n"))
                .unwrap_or_default();
            sc = sc.after_help(format!(
                "{after}Global options (--profile, --state-dir, --env-file, --allow, --deny, --packs, --read-only, -q, -v, …) work here too: see `b24 --help`."
            ));
            hide_in_subcommands(sc, globals)
        });
    }
    cmd
}
