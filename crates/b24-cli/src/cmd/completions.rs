//! `b24 completions SHELL`: print shell completions, or `b24 completions man` for a man page.
//!
//! Both are generated from the same clap definition the binary parses with, so they can never
//! drift from the real flags.

use clap::CommandFactory;

use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 completions bash > ~/.local/share/bash-completion/completions/b24
  b24 completions zsh > ~/.zfunc/_b24
  b24 completions man > b24.1")]
pub struct Args {
    /// bash, zsh, fish, elvish, powershell — or `man` for a roff man page of `b24`.
    #[arg(value_name = "SHELL")]
    pub shell: String,
}

pub async fn run(args: Args, _g: &Globals) -> anyhow::Result<i32> {
    let mut cmd = crate::cmd::Cli::command();
    // Render into memory first: clap_complete panics on a write error, and a reader that stops
    // early (`| head`) is not an error worth a panic.
    let mut buf = Vec::new();
    if args.shell.eq_ignore_ascii_case("man") {
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        return emit(&buf);
    }
    let shell: clap_complete::Shell = args.shell.parse().map_err(|_| {
        crate::exit::Exit::new(
            crate::exit::USAGE,
            format!(
                "unknown shell `{}`: use bash, zsh, fish, elvish, powershell or man",
                args.shell
            ),
        )
    })?;
    clap_complete::generate(shell, &mut cmd, "b24", &mut buf);
    emit(&buf)
}

fn emit(bytes: &[u8]) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}
