//! `b24 completions`: print shell completions.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(
        crate::exit::USAGE,
        "`b24 completions` is not built yet",
    ))
}
