//! Policy flags shared by every command that can call the portal (call, batch, apply, mcp, …).
//! They can only tighten what the operator's `policy.toml` allows, never loosen it.

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {}
