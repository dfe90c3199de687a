//! `b24 mcp`: serve b24 as an MCP server over stdio (see `crate::mcp`).
//!
//! stdout carries JSON-RPC only; logs go to stderr. The global policy flags apply to every
//! tool (`b24 mcp --read-only`, `--allow 'crm.*'`, `--require-plan`, ...), on top of the
//! operator's policy files; every tool goes through the same gate as the CLI.

use crate::exit;
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 mcp                              # for an MCP client's stdio server entry
  b24 mcp --read-only                  # only reads, whatever the model asks
  b24 mcp --require-plan --packs core  # writes only via b24_plan -> b24_apply

Client config (e.g. Claude Code): claude mcp add b24 -- b24 mcp")]
pub struct Args {
    /// Never ask the person to confirm destructive calls through the client (elicitation);
    /// such calls then need confirm_destructive: true in the tool arguments.
    #[arg(long)]
    pub no_elicitation: bool,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    crate::mcp::serve(g, !args.no_elicitation).await?;
    Ok(exit::OK)
}
