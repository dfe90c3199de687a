//! `b24 export`: stream every item of a list method as ndjson.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(
        crate::exit::USAGE,
        "`b24 export` is not built yet",
    ))
}
