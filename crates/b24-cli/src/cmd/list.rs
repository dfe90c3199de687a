//! `b24 list`: list one page, or every page with --all.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(
        crate::exit::USAGE,
        "`b24 list` is not built yet",
    ))
}
