//! `b24 completions SHELL`: print shell completions; `b24 completions man [COMMAND…]` for a man
//! page, or `--dir DIR` for a page per command.
//!
//! Both are generated from the same clap definition the binary parses with, so they can never
//! drift from the real flags. Method-name arguments (`call`, `list`, `export`, `plan`,
//! `describe`) complete from the built-in catalog: the candidates are written into the script
//! when it is generated (no call back into b24 at every TAB; a method missing from the catalog
//! can still be typed and is still accepted).

use std::path::{Path, PathBuf};

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 completions bash > ~/.local/share/bash-completion/completions/b24
  b24 completions zsh > ~/.zfunc/_b24
  b24 completions man > b24.1
  b24 completions man export > b24-export.1
  b24 completions man --dir ~/.local/share/man/man1      # b24.1 and a page per command")]
pub struct Args {
    /// bash, zsh, fish, elvish, powershell — or `man` for roff man pages.
    #[arg(value_name = "SHELL")]
    pub shell: String,
    /// With `man`: the command whose page to print (e.g. `export`, or `audit verify`).
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
    /// With `man`: write `b24.1` and `b24-COMMAND.1` for every command into DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Subcommands whose first positional argument is a REST method name.
const METHOD_ARGS: &[&str] = &["call", "list", "export", "plan", "describe"];

/// Settings read from the environment (beyond the flags' own `[env: …]`), for the man pages'
/// ENVIRONMENT section. The flags' variables are added from the parser itself.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "B24_WEBHOOK_URL",
        "The whole incoming-webhook URL, https://PORTAL/rest/USER_ID/CODE/.",
    ),
    (
        "B24_DOMAIN, B24_WEBHOOK_USER_ID, B24_WEBHOOK_CODE",
        "The same webhook, in parts.",
    ),
    (
        "B24_AUTH_MODE",
        "webhook (the default when a webhook is set) or oauth.",
    ),
    (
        "B24_ACCESS_TOKEN, B24_REFRESH_TOKEN",
        "OAuth tokens, when not stored by b24 auth login.",
    ),
    (
        "B24_CLIENT_ID, B24_CLIENT_SECRET",
        "The OAuth application's credentials (login and refresh).",
    ),
    (
        "B24_OAUTH_TOKEN_URL",
        "The token endpoint (default https://oauth.bitrix.info/oauth/token/).",
    ),
    (
        "B24_PLAN",
        "standard or enterprise: which rate limits to model.",
    ),
    (
        "B24_RATE_LIMITER",
        "sqlite (default), postgres, memory or off.",
    ),
    (
        "B24_RATE_BURST, B24_RATE_PER_SEC, B24_RATE_MARGIN",
        "Override the rate bucket's shape and reserve.",
    ),
    (
        "B24_TOKEN_STORE",
        "file (a 0600 file in the state dir) or postgres.",
    ),
    (
        "COLUMNS",
        "The width a table (-o table) is fitted to when stdout is not a terminal.",
    ),
    ("RUST_LOG", "Log filter for stderr (overrides -v)."),
];

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    // For man pages, the tree as `b24 --help` shows it (global flags described once, in b24(1)).
    let cmd = crate::globals::command();
    // Render into memory first: clap_complete panics on a write error, and a reader that stops
    // early (`| head`) is not an error worth a panic.
    let mut buf = Vec::new();
    if args.shell.eq_ignore_ascii_case("man") {
        if let Some(dir) = &args.dir {
            let n = write_pages(&cmd, dir)?;
            if !g.quiet {
                crate::errln!("b24: wrote {n} man pages into {}", dir.display());
            }
            return Ok(exit::OK);
        }
        let mut page = cmd.clone();
        let mut path = vec!["b24".to_string()];
        for name in &args.command {
            page = page.find_subcommand(name).cloned().ok_or_else(|| {
                Exit::new(
                    exit::USAGE,
                    format!("no command `{}` (see b24 --help)", args.command.join(" ")),
                )
            })?;
            path.push(name.clone());
        }
        render_man(page, &path, &mut buf)?;
        return emit(&buf);
    }
    if args.dir.is_some() || !args.command.is_empty() {
        return Err(Exit::new(
            exit::USAGE,
            "COMMAND and --dir go with `b24 completions man`",
        ));
    }
    let shell: clap_complete::Shell = args.shell.parse().map_err(|_| {
        Exit::new(
            exit::USAGE,
            format!(
                "unknown shell `{}`: use bash, zsh, fish, elvish, powershell or man",
                args.shell
            ),
        )
    })?;
    emit(&script(shell))
}

/// The completion script for a shell, with method names for the method arguments.
fn script(shell: clap_complete::Shell) -> Vec<u8> {
    use clap_complete::Shell;
    let mut buf = Vec::new();
    // Completions keep the global flags on every subcommand (they are accepted there).
    let mut cmd = with_method_candidates(<crate::cmd::Cli as clap::CommandFactory>::command());
    clap_complete::generate(shell, &mut cmd, "b24", &mut buf);
    match shell {
        Shell::Fish => {
            // clap_complete's fish script leaves positional values out: add the method names.
            let names = method_names().join(" ");
            for sub in METHOD_ARGS {
                buf.extend_from_slice(
                    format!(
                        "complete -c b24 -n \"__fish_b24_using_subcommand {sub}\" -f -a '{names}'\n"
                    )
                    .as_bytes(),
                );
            }
            buf
        }
        // The elvish and PowerShell scripts offer only flags and subcommands: the method names
        // go into each method command's candidate list (both filter by the typed prefix).
        Shell::Elvish => with_candidates(
            buf,
            |sub| format!("&'b24;{sub}'= {{\n"),
            |name| format!("            cand {name} 'REST method'\n"),
        ),
        Shell::PowerShell => with_candidates(
            buf,
            |sub| format!("'b24;{sub}' {{\n"),
            |name| {
                format!(
                    "            [CompletionResult]::new('{name}', '{name}', [CompletionResultType]::ParameterValue, 'REST method')\n"
                )
            },
        ),
        _ => buf,
    }
}

/// Insert a candidate line per method name after the line that opens each method command's
/// block (`open(sub)`, matched after the indentation). A script whose block is not found is
/// left as generated (the flags still complete).
fn with_candidates(
    script: Vec<u8>,
    open: impl Fn(&str) -> String,
    line: impl Fn(&str) -> String,
) -> Vec<u8> {
    let Ok(mut text) = String::from_utf8(script.clone()) else {
        return script;
    };
    let candidates: String = method_names().iter().map(|n| line(n)).collect();
    for sub in METHOD_ARGS {
        let marker = open(sub);
        if let Some(at) = text.find(&marker) {
            text.insert_str(at + marker.len(), &candidates);
        }
    }
    text.into_bytes()
}

/// The method-name arguments complete from the catalog (for the generated script only: the
/// parser keeps accepting any name).
fn with_method_candidates(mut cmd: clap::Command) -> clap::Command {
    let names = method_names();
    for sub in METHOD_ARGS {
        if cmd.find_subcommand(sub).is_none() {
            continue;
        }
        let names = names.clone();
        cmd = cmd.mut_subcommand(sub, move |sc| {
            if sc.get_arguments().any(|a| a.get_id() == "method") {
                sc.mut_arg("method", move |a| {
                    a.value_parser(clap::builder::PossibleValuesParser::new(names))
                })
            } else {
                sc
            }
        });
    }
    cmd
}

/// Every method name in the built-in catalog (plain names: nothing to quote in a script).
fn method_names() -> Vec<String> {
    b24_guard::Catalog::builtin()
        .search(None, None, None)
        .into_iter()
        .map(|m| m.name.clone())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .collect()
}

/// One man page: clap_mangen's sections with an ENVIRONMENT section and, for a subcommand,
/// the pointer to b24(1) for the global options.
fn render_man(cmd: clap::Command, path: &[String], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let title = path.join("-");
    let mut cmd = cmd
        .name(title.clone())
        .bin_name(path.join(" "))
        .version(env!("CARGO_PKG_VERSION"));
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).title(title);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    man.render_extra_section(out)?;
    if path.len() > 1 {
        out.extend_from_slice(
            b".SH \"GLOBAL OPTIONS\"\nThe options of b24(1) (--profile, --state-dir, --config-dir, --env-file, --allow, --deny, --packs, --read-only, --strict, --require-plan, -q, -v, ...) work with this command too; see b24(1).\n",
        );
    }
    environment_section(&cmd, out);
    man.render_version_section(out)?;
    Ok(())
}

/// Quote text for roff: a leading `.` or `'` and backslashes would be read as requests.
fn roff(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn environment_section(cmd: &clap::Command, out: &mut Vec<u8>) {
    let mut vars: Vec<(String, String)> = ENVIRONMENT
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Every flag that reads a variable, here or in a subcommand (hidden global copies too).
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        for a in c.get_arguments() {
            if let Some(env) = a.get_env() {
                let name = env.to_string_lossy().to_string();
                if !vars.iter().any(|(k, _)| k == &name) {
                    let flag = a
                        .get_long()
                        .map(|l| format!("--{l}"))
                        .unwrap_or_else(|| a.get_id().to_string());
                    vars.push((name, format!("The default of {flag}.")));
                }
            }
        }
        stack.extend(c.get_subcommands());
    }
    let mut s = String::from(".SH ENVIRONMENT\n");
    for (k, v) in vars {
        s.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(&k), roff(&v)));
    }
    s.push_str(
        ".PP\nVariables may also come from --env-file FILE or a profile in the config dir's config.toml (the environment wins).\n",
    );
    out.extend_from_slice(s.as_bytes());
}

/// `b24.1` and `b24-SUB[-SUB].1` for every visible command.
fn write_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Exit::new(exit::USAGE, format!("--dir {}: {e}", dir.display())))?;
    let mut n = 0;
    let mut stack: Vec<(clap::Command, Vec<String>)> = vec![(cmd.clone(), vec!["b24".into()])];
    while let Some((c, path)) = stack.pop() {
        for sc in c.get_subcommands() {
            if sc.is_hide_set() || sc.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sc.get_name().to_string());
            stack.push((sc.clone(), p));
        }
        let mut buf = Vec::new();
        render_man(c, &path, &mut buf)?;
        let file = dir.join(format!("{}.1", path.join("-")));
        std::fs::write(&file, &buf)
            .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", file.display())))?;
        n += 1;
    }
    Ok(n)
}

fn emit(bytes: &[u8]) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap_complete::Shell;

    /// The lines between the block opening `marker` and the next closing brace line.
    fn block<'a>(text: &'a str, marker: &str) -> &'a str {
        let start = text.find(marker).expect(marker) + marker.len();
        let rest = &text[start..];
        &rest[..rest.find("\n        }").unwrap_or(rest.len())]
    }

    #[test]
    fn elvish_and_powershell_complete_method_names_for_method_commands() {
        let elvish = String::from_utf8(script(Shell::Elvish)).unwrap();
        let ps = String::from_utf8(script(Shell::PowerShell)).unwrap();
        for sub in METHOD_ARGS {
            let e = block(&elvish, &format!("&'b24;{sub}'= {{"));
            assert!(
                e.contains("cand crm.deal.list 'REST method'"),
                "elvish {sub}"
            );
            assert!(e.contains("cand --"), "elvish {sub} keeps its flags");
            let p = block(&ps, &format!("'b24;{sub}' {{"));
            assert!(
                p.contains("[CompletionResult]::new('crm.deal.list', 'crm.deal.list', [CompletionResultType]::ParameterValue"),
                "powershell {sub}"
            );
        }
        // Other commands do not offer them.
        assert!(!block(&elvish, "&'b24;doctor'= {").contains("crm.deal.list"));
        assert!(!block(&ps, "'b24;doctor' {").contains("crm.deal.list"));
    }
}
