//! `b24 sandbox`: run the local emulated bitrix24 portal.

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Globals) -> anyhow::Result<i32> {
    Err(crate::exit::Exit::new(crate::exit::USAGE, "`b24 sandbox` is not built yet"))
}
