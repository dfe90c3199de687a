//! Flags shared by every command, and turning them into a library `Config` / `Client`.

use std::path::PathBuf;

/// Global options (they may be given before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Globals {
    /// Load environment variables from this .env file first (never loaded implicitly).
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Profile name in the config dir's `config.toml`.
    #[arg(long, global = true, env = "B24_PROFILE")]
    pub profile: Option<String>,
    /// Configuration directory (operator `policy.toml`, profiles).
    #[arg(long, global = true, env = "B24_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// State directory (tokens, limiter, plans, idempotency records, audit log, queue).
    #[arg(long, global = true, env = "B24_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Hide progress bars and informational messages on stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` also works.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    pub policy: crate::policy_args::PolicyArgs,
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
    /// Resolve the configuration (flags > env > profile file > defaults) and build a client.
    pub async fn client(&self) -> anyhow::Result<b24::Client> {
        Err(crate::exit::Exit::new(
            crate::exit::USAGE,
            "configuration loading is not built yet",
        ))
    }
}
