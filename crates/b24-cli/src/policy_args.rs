//! Policy flags shared by every command that can call the portal (call, batch, apply, mcp, …).
//! They can only tighten what the operator's `policy.toml` allows, never loosen it.

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Only allow methods matching these globs (repeatable; `crm.*`).
    #[arg(
        long = "allow",
        global = true,
        value_name = "GLOB",
        env = "B24_METHOD_ALLOWLIST",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// Refuse methods matching these globs (repeatable).
    #[arg(
        long = "deny",
        global = true,
        value_name = "GLOB",
        env = "B24_METHOD_DENYLIST",
        value_delimiter = ','
    )]
    pub deny: Vec<String>,
    /// Only allow methods of these capability packs (core, comms, automation, …; see `b24 methods`).
    #[arg(
        long,
        global = true,
        value_name = "PACKS",
        env = "B24_PACKS",
        value_delimiter = ','
    )]
    pub packs: Option<Vec<String>>,
    /// Refuse everything but reads.
    #[arg(long, global = true, env = "B24_READ_ONLY", value_parser = clap::builder::FalseyValueParser::new())]
    pub read_only: bool,
    /// Refuse methods that are not in the catalog of documented methods.
    #[arg(long, global = true, env = "B24_STRICT", value_parser = clap::builder::FalseyValueParser::new())]
    pub strict: bool,
    /// In strict mode, allow methods missing from the catalog (unless the operator forbids it).
    #[arg(long, global = true)]
    pub allow_unlisted: bool,
    /// Writes must go through `b24 plan` → `b24 apply`.
    #[arg(long, global = true, env = "B24_REQUIRE_PLAN", value_parser = clap::builder::FalseyValueParser::new())]
    pub require_plan: bool,
    /// Refuse parameters a method does not take, where its documentation lists them all
    /// (`--strict-params=false` turns off MCP's default; an operator's `strict_params = true`
    /// cannot be turned off). See `b24 describe METHOD`.
    #[arg(long, global = true, env = "B24_STRICT_PARAMS", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub strict_params: Option<bool>,
    /// At most this many writes per hour (counted in the state dir).
    #[arg(long, global = true, env = "B24_MAX_WRITES_PER_HOUR", value_name = "N")]
    pub max_writes_per_hour: Option<u32>,
}

impl PolicyArgs {
    pub fn agent(&self) -> b24_guard::policy::AgentPolicy {
        b24_guard::policy::AgentPolicy {
            allow: self
                .allow
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
            deny: self
                .deny
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
            packs: self.packs.clone().filter(|p| !p.is_empty()),
            read_only: self.read_only,
            strict: self.strict,
            allow_unlisted: self.allow_unlisted,
            require_plan: self.require_plan,
            max_writes_per_hour: self.max_writes_per_hour,
            strict_params: self.strict_params,
        }
    }
}
