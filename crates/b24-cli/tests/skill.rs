//! The agent skill folder (skills/bitrix24-agent) is part of the product: these tests check that
//! it is valid for every client that loads it, and that every `b24` command it shows works.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use support::{Env, SandboxConfig};

fn skill_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../skills/bitrix24-agent")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// A deliberately small YAML reader: block mappings, block sequences and plain or quoted scalars.
// It rejects flow collections (`{...}`, `[...]`) outright, because skills-ref (strictyaml)
// rejects them too, so anything this accepts is within the subset every client parses.
// ---------------------------------------------------------------------------------------------

fn yaml_scalar(raw: &str) -> Result<Value, String> {
    let s = raw.trim();
    if s.starts_with('{') || s.starts_with('[') {
        return Err(format!("flow collection not allowed: {s}"));
    }
    if let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return Ok(Value::String(inner.replace("\\\"", "\"")));
    }
    if let Some(inner) = s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return Ok(Value::String(inner.replace("''", "'")));
    }
    match s {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Ok(Value::String(s.to_string())),
    }
}

fn indent_of(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// Parse lines[*i..] at exactly `indent` into a mapping or a sequence.
fn yaml_block(lines: &[&str], i: &mut usize, indent: usize) -> Result<Value, String> {
    let first = lines[*i];
    if first.trim_start().starts_with("- ") || first.trim() == "-" {
        let mut seq = Vec::new();
        while *i < lines.len() && indent_of(lines[*i]) == indent {
            let t = lines[*i].trim_start();
            let Some(item) = t.strip_prefix("- ") else {
                return Err(format!("expected a list item: {t}"));
            };
            seq.push(yaml_scalar(item)?);
            *i += 1;
        }
        return Ok(Value::Array(seq));
    }
    let mut map = Map::new();
    while *i < lines.len() {
        let l = lines[*i];
        let ind = indent_of(l);
        if ind < indent {
            break;
        }
        if ind > indent {
            return Err(format!("unexpected indentation: {l}"));
        }
        let t = l.trim_start();
        let (k, v) = t
            .split_once(':')
            .ok_or_else(|| format!("expected `key: value`: {t}"))?;
        if map.contains_key(k) {
            return Err(format!("duplicate key {k}"));
        }
        *i += 1;
        if v.trim().is_empty() {
            if *i >= lines.len() || indent_of(lines[*i]) <= indent {
                return Err(format!("key {k} has no value"));
            }
            let child = indent_of(lines[*i]);
            map.insert(k.to_string(), yaml_block(lines, i, child)?);
        } else {
            map.insert(k.to_string(), yaml_scalar(v)?);
        }
    }
    Ok(Value::Object(map))
}

fn yaml(text: &str) -> Result<Value, String> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    if lines.iter().any(|l| l.contains('\t')) {
        return Err("tabs are not allowed in YAML indentation".into());
    }
    let mut i = 0;
    let v = yaml_block(&lines, &mut i, 0)?;
    if i != lines.len() {
        return Err(format!("trailing content at: {}", lines[i]));
    }
    Ok(v)
}

fn frontmatter(skill_md: &str) -> (String, String) {
    let rest = skill_md
        .strip_prefix("---\n")
        .expect("SKILL.md starts with `---`");
    let end = rest
        .find("\n---\n")
        .expect("frontmatter is closed by `---`");
    (rest[..end].to_string(), rest[end + 5..].to_string())
}

#[test]
fn yaml_reader_rejects_flow_style_and_reads_blocks() {
    assert!(yaml("a:\n  bins: [\"b24\"]\n").is_err());
    assert!(yaml("a: {\"x\": 1}\n").is_err());
    let v = yaml("a:\n  b:\n    - x\n    - y\n  c: \"q\"\n").unwrap();
    assert_eq!(v["a"]["b"], serde_json::json!(["x", "y"]));
    assert_eq!(v["a"]["c"], "q");
}

#[test]
fn skill_frontmatter_is_valid_for_every_client() {
    let dir = skill_dir();
    let text = read(&dir.join("SKILL.md"));
    let (fm, body) = frontmatter(&text);
    let v = yaml(&fm).unwrap_or_else(|e| panic!("frontmatter is not block YAML: {e}"));
    let obj = v.as_object().expect("frontmatter is a mapping");

    // Only the keys that skills-ref, Anthropic's and OpenAI's validators all accept.
    let allowed = [
        "name",
        "description",
        "license",
        "allowed-tools",
        "metadata",
    ];
    for k in obj.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "frontmatter key `{k}` is not portable"
        );
    }

    let name = obj["name"].as_str().expect("name is a string");
    let folder = dir.canonicalize().unwrap();
    assert_eq!(
        Some(name),
        folder.file_name().and_then(|f| f.to_str()),
        "name must equal the folder name"
    );
    assert!(!name.is_empty() && name.len() <= 64);
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
    assert!(!name.starts_with('-') && !name.ends_with('-') && !name.contains("--"));
    assert!(!name.contains("claude") && !name.contains("anthropic"));

    let desc = obj["description"]
        .as_str()
        .expect("description is a string");
    let n = desc.chars().count();
    assert!((1..=1024).contains(&n), "description has {n} chars");
    assert!(
        !desc.contains('<') && !desc.contains('>'),
        "description has < or >"
    );
    for word in [
        "Bitrix24",
        "Битрикс24",
        "CRM",
        "сделка",
        "лид",
        "контакт",
        "задача",
    ] {
        assert!(desc.contains(word), "description lacks trigger word {word}");
    }

    // OpenClaw gating, block style only (the raw text, not just our parse).
    let meta_start = fm.find("\nmetadata:").expect("metadata block") + 1;
    let meta_text = &fm[meta_start..];
    assert!(
        !meta_text.contains('{') && !meta_text.contains('['),
        "metadata must be block-style YAML"
    );
    let oc = &obj["metadata"]["openclaw"];
    assert_eq!(oc["requires"]["bins"], serde_json::json!(["b24"]));
    let envs = oc["requires"]["env"].as_array().expect("requires.env list");
    assert!(envs.iter().any(|e| e == "B24_WEBHOOK_URL"));
    let primary = oc["primaryEnv"].as_str().expect("primaryEnv");
    assert!(envs.iter().any(|e| e == primary));

    let lines = text.lines().count();
    assert!(lines < 500, "SKILL.md has {lines} lines");
    assert!(body.contains("# "), "SKILL.md has a body");
}

/// Relative links `[x](path)` in a markdown text (anchors and URLs excluded).
fn relative_links(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = md;
    while let Some(p) = rest.find("](") {
        rest = &rest[p + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
    }
    out
}

#[test]
fn every_file_the_skill_links_to_exists_one_level_deep() {
    let dir = skill_dir();
    let text = read(&dir.join("SKILL.md"));
    let links = relative_links(&text);
    assert!(links.len() >= 3, "SKILL.md links its references");
    for l in &links {
        assert!(dir.join(l).is_file(), "SKILL.md links to missing {l}");
        assert!(
            l.matches('/').count() <= 1,
            "{l} is more than one level deep"
        );
    }
    // Scripts it names exist and are executable.
    let script = dir.join("scripts/b24");
    assert!(text.contains("scripts/b24"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "scripts/b24 is executable");
    }
    // Long references have a table of contents; references do not chain further.
    for f in std::fs::read_dir(dir.join("references")).unwrap() {
        let p = f.unwrap().path();
        let t = read(&p);
        if t.lines().count() > 100 {
            assert!(
                t.contains("## Contents"),
                "{} needs a table of contents",
                p.display()
            );
        }
        for l in relative_links(&t) {
            assert!(
                l.starts_with('#') || !l.contains(".md"),
                "{} links on to {l}",
                p.display()
            );
        }
    }
}

#[test]
fn openai_yaml_has_the_interface_and_policy_codex_reads() {
    let v = yaml(&read(&skill_dir().join("agents/openai.yaml"))).expect("openai.yaml parses");
    let i = &v["interface"];
    let dn = i["display_name"].as_str().expect("display_name");
    assert!(!dn.is_empty() && dn.chars().count() <= 64);
    let sd = i["short_description"].as_str().expect("short_description");
    let n = sd.chars().count();
    assert!((25..=64).contains(&n), "short_description has {n} chars");
    let dp = i["default_prompt"].as_str().expect("default_prompt");
    assert!(!dp.is_empty() && dp.chars().count() <= 1024);
    assert!(
        dp.contains("$bitrix24-agent"),
        "default prompt names the skill"
    );
    for k in v["interface"].as_object().unwrap().keys() {
        assert!(
            [
                "display_name",
                "short_description",
                "icon_small",
                "icon_large",
                "brand_color",
                "default_prompt"
            ]
            .contains(&k.as_str()),
            "unknown interface key {k}"
        );
    }
    assert_eq!(v["policy"]["allow_implicit_invocation"], Value::Bool(true));
}

#[test]
fn wrapper_script_finds_b24_or_explains_how_to_install() {
    let script = skill_dir().join("scripts/b24");
    // With the built binary on PATH, the wrapper runs it with the same arguments.
    let bin_dir = support::b24_bin().parent().unwrap().to_path_buf();
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg("--version")
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("b24 "));

    // Copied away from the repo, with neither b24 nor cargo on PATH: an install hint, exit 127.
    let tmp = tempfile::tempdir().unwrap();
    let scripts = tmp.path().join("bitrix24-agent/scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::copy(&script, scripts.join("b24")).unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg(scripts.join("b24"))
        .arg("--version")
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo install --path crates/b24-cli"));
}

// ---------------------------------------------------------------------------------------------
// Running the documented commands.
//
// Every ```bash block in SKILL.md and references/*.md is a tiny script in this subset:
//   b24 ARGS... [> FILE]             run b24 (cwd = a temp dir); must exit 0
//   NAME=$(b24 ARGS...)              run b24 and keep its trimmed stdout in $NAME
//   # comment                        ignored; a block whose first line is `# illustrative`, and a
//                                    line with a `# illustrative` comment, are not run; a block
//                                    whose first line is `# with OAuth app auth` runs with OAuth
// Single quotes are literal; `$NAME` / `${NAME}` expand outside single quotes. After each
// command whose stdout is a JSON object, its scalar fields become variables in upper case
// twice: as NAME and as SUBCOMMAND_NAME (so `b24 plan`'s `id` becomes $PLAN_ID for the following
// `b24 apply "$PLAN_ID"`).
// ---------------------------------------------------------------------------------------------

struct DocCommand {
    file: String,
    line: String,
    /// The block starts with `# with OAuth app auth`: run it with the app's tokens.
    oauth: bool,
}

fn bash_blocks(md: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for l in md.lines() {
        let t = l.trim();
        match &mut cur {
            None if t == "```bash" => cur = Some(Vec::new()),
            Some(_) if t == "```" => blocks.push(cur.take().unwrap()),
            Some(b) => b.push(t.to_string()),
            None => {}
        }
    }
    blocks
}

fn documented_commands() -> Vec<Vec<DocCommand>> {
    let dir = skill_dir();
    let mut files = vec![dir.join("SKILL.md")];
    let mut refs: Vec<PathBuf> = std::fs::read_dir(dir.join("references"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    refs.sort();
    files.extend(refs);
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for block in bash_blocks(&read(&f)) {
            if block
                .first()
                .is_some_and(|l| l.starts_with("# illustrative"))
            {
                continue;
            }
            let oauth = block.first().is_some_and(|l| l.starts_with("# with OAuth"));
            let mut cmds = Vec::new();
            let mut pending = String::new();
            for l in block {
                if let Some(cont) = l.strip_suffix('\\') {
                    pending.push_str(cont);
                    pending.push(' ');
                    continue;
                }
                let full = format!("{pending}{l}");
                pending.clear();
                if full.is_empty() || full.starts_with('#') || full.contains("# illustrative") {
                    continue;
                }
                cmds.push(DocCommand {
                    file: name.clone(),
                    line: full,
                    oauth,
                });
            }
            out.push(cmds);
        }
    }
    out
}

/// Split a command line into words with shell quoting and `$VAR` expansion. Stops at an
/// unquoted `#` (a trailing comment).
fn shell_words(line: &str, vars: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let expand = |i: &mut usize, out: &mut String| -> Result<(), String> {
        let braced = chars.get(*i + 1) == Some(&'{');
        let mut j = *i + 1 + usize::from(braced);
        let start = j;
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            j += 1;
        }
        let name: String = chars[start..j].iter().collect();
        if name.is_empty() {
            out.push('$');
            *i += 1;
            return Ok(());
        }
        if braced {
            if chars.get(j) != Some(&'}') {
                return Err("unclosed ${".into());
            }
            j += 1;
        }
        let v = vars
            .get(&name)
            .ok_or_else(|| format!("${name} is not set by an earlier command"))?;
        out.push_str(v);
        *i = j;
        Ok(())
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                if has {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
                i += 1;
            }
            '#' if !has => break,
            '\'' => {
                has = true;
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or("unclosed single quote")?;
                cur.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            }
            '"' => {
                has = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unclosed double quote".into()),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('$') => expand(&mut i, &mut cur)?,
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            cur.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&x) => {
                            cur.push(x);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                has = true;
                expand(&mut i, &mut cur)?;
            }
            _ => {
                has = true;
                cur.push(c);
                i += 1;
            }
        }
    }
    if has {
        words.push(cur);
    }
    Ok(words)
}

#[test]
fn shell_words_quote_and_expand_like_sh() {
    let mut v = BTreeMap::new();
    v.insert("ID".to_string(), "42".to_string());
    let w = shell_words(
        r#"b24 call x --params '{"id":'"$ID"'}' "a b" ${ID} # note"#,
        &v,
    )
    .unwrap();
    assert_eq!(
        w,
        ["b24", "call", "x", "--params", r#"{"id":42}"#, "a b", "42"]
    );
    assert!(shell_words("b24 apply \"$NOPE\"", &v).is_err());
}

/// Run one documented line; returns an error text for the report.
async fn run_doc_line(
    env: &Env,
    cwd: &Path,
    vars: &mut BTreeMap<String, String>,
    secrets: &[String],
    line: &str,
) -> Result<(), String> {
    let (assign, rest) = match line.split_once("=$(") {
        Some((name, r))
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && r.ends_with(')') =>
        {
            (Some(name.to_string()), &r[..r.len() - 1])
        }
        _ => (None, line),
    };
    let mut words = shell_words(rest, vars)?;
    let mut redirect = None;
    if let Some(p) = words.iter().position(|w| w == ">") {
        redirect = words.get(p + 1).cloned();
        words.truncate(p);
    }
    if words.first().map(String::as_str) != Some("b24") {
        return Err("not a b24 command (mark it `# illustrative`)".into());
    }
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let mut cmd = env.cmd(&args);
    cmd.current_dir(cwd);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("b24 runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    // Whatever the docs make b24 print, no credential may appear in it.
    for secret in secrets.iter().filter(|x| x.len() >= 6) {
        if stdout.contains(secret.as_str())
            || String::from_utf8_lossy(&out.stderr).contains(secret.as_str())
        {
            return Err(format!(
                "a secret ({}…) appears in the output",
                &secret[..3]
            ));
        }
    }
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if let Some(f) = redirect {
        std::fs::write(cwd.join(f), &stdout).unwrap();
    }
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&stdout) {
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            let sub = words
                .get(1)
                .map(|w| w.to_ascii_uppercase())
                .unwrap_or_default();
            vars.insert(format!("{sub}_{}", k.to_ascii_uppercase()), s.clone());
            vars.insert(k.to_ascii_uppercase(), s);
        }
    }
    if let Some(name) = assign {
        vars.insert(name, stdout.trim().trim_matches('"').to_string());
    }
    Ok(())
}

#[test]
fn the_docs_contain_runnable_commands() {
    let blocks = documented_commands();
    let n: usize = blocks.iter().map(Vec::len).sum();
    assert!(n >= 30, "only {n} documented commands found");
    for c in blocks.iter().flatten() {
        assert!(
            c.line.starts_with("b24 ") || c.line.contains("=$(b24 "),
            "{}: `{}` is neither a b24 command nor marked illustrative",
            c.file,
            c.line
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_command_runs_against_the_sandbox() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in documented_commands() {
        // Each block is its own little script: a fresh portal, fresh dirs, fresh variables.
        let sb = support::sandbox(SandboxConfig {
            seed_leads: 20,
            ..Default::default()
        })
        .await;
        let i = sb.info();
        let secrets = [
            i.webhook_code.clone(),
            i.client_secret.clone(),
            i.access_token.clone(),
            i.refresh_token.clone(),
        ];
        let env = if block.first().is_some_and(|c| c.oauth) {
            Env::oauth(&sb)
        } else {
            Env::webhook(&sb)
        };
        let cwd = env.dir.path().to_path_buf();
        let mut vars = BTreeMap::new();
        for c in block {
            ran += 1;
            if let Err(e) = run_doc_line(&env, &cwd, &mut vars, &secrets, &c.line).await {
                failures.push(format!("{}: {}\n    -> {e}", c.file, c.line));
            }
        }
        sb.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} documented commands failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn completions_and_man_page_come_from_the_real_parser() {
    let env = Env::bare();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = env.cmd(&["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        // Subcommands and their flags are in the script.
        assert!(
            text.contains("sandbox") && text.contains("confirm-write"),
            "{shell}"
        );
    }
    let man = env.cmd(&["completions", "man"]).output().unwrap();
    assert!(man.status.success());
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(text.contains(".TH b24"));
    let bad = env.cmd(&["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
}
