//! `b24 call`: call any rest method (v2, or v3 with --v3).

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(crate::exit::USAGE, "`b24 call` is not built yet"))
}
