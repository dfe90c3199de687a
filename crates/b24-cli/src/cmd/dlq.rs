//! `b24 dlq`: inspect, replay and purge dead-lettered events.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(
        crate::exit::USAGE,
        "`b24 dlq` is not built yet",
    ))
}
