//! Flags shared by every command, and turning them into a library `Config` / `Client`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::exit::{self, Exit};

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
    /// Given before the command (`b24 --portal X call …`): `auth --portal` is another flag.
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

/// Logs go to stderr only: stdout is for data.
pub fn init_tracing(g: &Globals) {
    let default = match g.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    /// written `B24_WEBHOOK_URL` or `webhook_url`).
    pub fn lookup(&self) -> anyhow::Result<impl Fn(&str) -> Option<String> + use<>> {
        let layers = self.caller_vars()?;
        Ok(move |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| layers.iter().find_map(|(_, m)| m.get(k).cloned()))
        })
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

/// The command tree as `b24` parses it: the global flags (connection, state, policy, `-q`,
/// `-v`) are described once, in `b24 --help`. They still work before or after any subcommand,
/// but each subcommand's help lists only its own flags and points to `b24 --help` for the rest
/// (twenty guard flags repeated under `b24 completions --help` hid what that command takes).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let cmd = crate::cmd::Cli::command();
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
