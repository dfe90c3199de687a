//! `b24 events`: bind, unbind and list event handlers; serve the online receiver.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(
        crate::exit::USAGE,
        "`b24 events` is not built yet",
    ))
}
