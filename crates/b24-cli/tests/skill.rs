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
    // OpenClaw ANDs every `requires.env` entry and has no "any of" form for env vars, so any
    // credential listed there hides the skill from users of the other auth mode (a webhook
    // user has no B24_ACCESS_TOKEN; an OAuth user, after `b24 auth login`, has no
    // B24_WEBHOOK_URL). Gate on the binary only; `primaryEnv` merely lets OpenClaw fill the
    // webhook URL from its apiKey setting.
    assert!(
        oc["requires"].get("env").is_none(),
        "requires.env would hide the skill from one of the auth modes"
    );
    let primary = oc["primaryEnv"].as_str().expect("primaryEnv");
    assert_eq!(primary, "B24_WEBHOOK_URL");

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
        // "One level deep" in the spec means no chains of references (SKILL.md → a reference
        // → another); a reference may sit in a folder (references/packs/core.md).
        assert!(
            l.starts_with("references/") || l.starts_with("scripts/"),
            "{l} is outside references/ and scripts/"
        );
        assert!(l.matches('/').count() <= 2, "{l} is nested too deep");
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
    for p in reference_files() {
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

    // Inside a checkout where the binary is already built (debug or release), with neither b24
    // nor cargo on PATH: the wrapper runs the built binary instead of giving up.
    #[cfg(unix)]
    for profile in ["debug", "release"] {
        let repo = tempfile::tempdir().unwrap();
        let r = repo.path();
        std::fs::create_dir_all(r.join("crates/b24-cli")).unwrap();
        std::fs::write(r.join("crates/b24-cli/Cargo.toml"), "").unwrap();
        let scripts = r.join("skills/bitrix24-agent/scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        std::fs::copy(&script, scripts.join("b24")).unwrap();
        std::fs::create_dir_all(r.join("target").join(profile)).unwrap();
        std::os::unix::fs::symlink(
            support::b24_bin(),
            r.join("target").join(profile).join("b24"),
        )
        .unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg(scripts.join("b24"))
            .arg("--version")
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{profile}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("b24 "));
    }
}

/// Pack name → (method → risk) from the method catalog the binary is built with.
fn catalog() -> BTreeMap<String, BTreeMap<String, String>> {
    let tsv = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../b24-guard/data/catalog.tsv"));
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in tsv.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() > 6 {
            out.entry(f[6].to_string())
                .or_default()
                .insert(f[0].to_string(), f[2].to_string());
        }
    }
    out
}

#[test]
fn every_pack_has_a_small_reference_with_true_risks_and_two_chains() {
    let dir = skill_dir();
    let skill = read(&dir.join("SKILL.md"));
    let cat = catalog();
    assert!(cat.len() >= 12, "the catalog has {} packs", cat.len());
    let all: BTreeMap<&String, &String> = cat.values().flat_map(|m| m.iter()).collect();
    for (pack, methods) in &cat {
        let rel = format!("references/packs/{pack}.md");
        let p = dir.join(&rel);
        assert!(p.is_file(), "no {rel}");
        assert!(
            skill.contains(&rel),
            "SKILL.md does not say when to load {rel}"
        );
        let t = read(&p);
        // The original loaded ~2 KB per pack; keep ours in the same league.
        assert!(t.len() < 7000, "{rel} has {} bytes", t.len());
        assert!(t.contains(&format!("--packs {pack}")) || t.contains(&format!("--pack {pack}")));
        // Main-methods table rows: | `method` | risk | …
        let mut rows = 0;
        for l in t.lines() {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if cells.len() < 4 || !cells[1].starts_with('`') {
                continue;
            }
            let m = cells[1].trim_matches('`');
            let Some(risk) = all.get(&m.to_string()) else {
                panic!("{rel}: `{m}` is not in the catalog");
            };
            assert_eq!(cells[2], risk.as_str(), "{rel}: risk of {m}");
            if methods.contains_key(m) {
                rows += 1;
            }
        }
        assert!(rows >= 5, "{rel} lists only {rows} of its methods");
        let chains = bash_blocks(&t)
            .iter()
            .filter(|b| b.first().is_none_or(|l| !l.starts_with("# illustrative")))
            .filter(|b| {
                b.iter()
                    .filter(|l| l.starts_with("b24 ") || l.contains("=$(b24 "))
                    .count()
                    >= 2
            })
            .count();
        assert!(chains >= 2, "{rel} has {chains} runnable chains");
    }
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
//   NAME=$(b24 ARGS... | jq -r .a.b)  the same, keeping one field of its JSON output
//   b24 ... # portal-only             a method the sandbox does not emulate: `call`/`batch` run
//                                    with --dry-run (so flags, gate and JSON are checked), an
//                                    `apply` only has its variables checked; an assignment on
//                                    such a line stores the placeholder id 1
// Single quotes are literal; `$NAME` / `${NAME}` expand outside single quotes. Variables come
// only from explicit assignments, as in a real shell.
// ---------------------------------------------------------------------------------------------

struct DocCommand {
    file: String,
    line: String,
    /// The block starts with `# with OAuth app auth`: run it with the app's tokens.
    oauth: bool,
    /// The line carries `# portal-only`: the sandbox does not emulate this method, so the line
    /// is checked with `--dry-run` (parsing, gate, risk, confirmation flags) instead of sent.
    portal_only: bool,
}

/// The trailing comment that marks a command for a method the sandbox does not emulate.
const PORTAL_ONLY: &str = "# portal-only";

/// The placeholder a `# portal-only` assignment stores (a record id the portal would return).
const PORTAL_ONLY_ID: &str = "1";

/// SKILL.md's references: references/*.md and references/packs/*.md, sorted.
fn reference_files() -> Vec<PathBuf> {
    let dir = skill_dir().join("references");
    let mut out = Vec::new();
    for sub in [dir.clone(), dir.join("packs")] {
        let Ok(rd) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
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
    files.extend(reference_files());
    let mut out = Vec::new();
    for f in files {
        let name = f
            .strip_prefix(&dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .to_string();
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
                let portal_only = full.contains(PORTAL_ONLY);
                cmds.push(DocCommand {
                    file: name.clone(),
                    line: full,
                    oauth,
                    portal_only,
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

/// `NAME=$(b24 ... [| jq -r PATH])`: the variable, the b24 part and the jq path (if any).
fn split_assignment(line: &str) -> Result<(Option<String>, String, Option<String>), String> {
    let Some((name, r)) = line.split_once("=$(") else {
        return Ok((None, line.to_string(), None));
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Ok((None, line.to_string(), None));
    }
    // Drop a trailing comment after the closing parenthesis.
    let r = r.trim_end();
    let close = r.rfind(')').ok_or("unclosed $(")?;
    let inner = &r[..close];
    let (cmd, jq) = match inner.rsplit_once(" | jq -r ") {
        Some((c, path)) => {
            let path = path.trim().trim_matches('\'').to_string();
            if !path.starts_with('.') {
                return Err(format!("jq path `{path}` must be a plain .a.b path"));
            }
            (c.to_string(), Some(path))
        }
        None if inner.contains('|') => return Err("only `| jq -r .path` may follow b24".into()),
        None => (inner.to_string(), None),
    };
    Ok((Some(name.to_string()), cmd, jq))
}

/// Follow a `.a.b.0` path in a JSON value (what `jq -r` prints for a scalar).
fn jq_path(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Run one documented line; returns an error text for the report. Variables come only from
/// explicit `NAME=$(...)` assignments, exactly as in a real shell: a `$PLAN_ID` nobody
/// assigned fails here just as it would for the agent.
async fn run_doc_line(
    env: &Env,
    cwd: &Path,
    vars: &mut BTreeMap<String, String>,
    secrets: &[String],
    doc: &DocCommand,
) -> Result<(), String> {
    let (assign, rest, jq) = split_assignment(&doc.line)?;
    let mut words = shell_words(&rest, vars)?;
    // `> FILE` writes stdout to FILE, `>> FILE` appends (as a resumed export should).
    let mut redirect = None;
    if let Some(p) = words.iter().position(|w| w == ">" || w == ">>") {
        redirect = words.get(p + 1).cloned().map(|f| (f, words[p] == ">>"));
        words.truncate(p);
    }
    if words.first().map(String::as_str) != Some("b24") {
        return Err("not a b24 command (mark it `# illustrative`)".into());
    }
    if doc.portal_only {
        if redirect.is_some() {
            return Err("a # portal-only line cannot redirect its output".into());
        }
        match words.get(1).map(String::as_str) {
            // `apply` has no dry run: the plan id must resolve (checked by shell_words above).
            Some("apply") => {
                if let Some(name) = assign {
                    vars.insert(name, PORTAL_ONLY_ID.into());
                }
                return Ok(());
            }
            Some("call" | "batch") => words.push("--dry-run".into()),
            other => {
                return Err(format!(
                    "# portal-only is for call/batch/apply, not {other:?}"
                ));
            }
        }
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
    if doc.portal_only {
        let v: Value = serde_json::from_str(&stdout).map_err(|e| format!("dry run: {e}"))?;
        if v["dry_run"] != Value::Bool(true) && v["sent"] != Value::Bool(false) {
            return Err("the dry run did not report `sent: false`".into());
        }
        // A dry run does not insist on confirmations, so check here that the documented line
        // carries the flag its risk class needs on a real portal.
        let needs = match v["risk"].as_str() {
            Some("write" | "admin") => Some("--confirm-write"),
            Some("destructive") => Some("--confirm-destructive"),
            _ => None,
        };
        if let Some(flag) = needs
            && !words.iter().any(|w| w == flag)
        {
            return Err(format!(
                "a {} call needs {flag} on a real portal",
                v["risk"]
            ));
        }
        if let Some(name) = assign {
            vars.insert(name, PORTAL_ONLY_ID.into());
        }
        return Ok(());
    }
    if let Some((f, append)) = redirect {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(cwd.join(f))
            .unwrap();
        file.write_all(stdout.as_bytes()).unwrap();
    }
    if let Some(name) = assign {
        let value = match jq {
            Some(path) => {
                let v: Value = serde_json::from_str(&stdout)
                    .map_err(|e| format!("stdout is not JSON for jq: {e}"))?;
                jq_path(&v, &path).ok_or_else(|| format!("jq path {path} not in the output"))?
            }
            None => stdout.trim().trim_matches('"').to_string(),
        };
        if value.is_empty() || value.contains('\n') {
            return Err(format!("${name} would be `{value}`, not one value"));
        }
        vars.insert(name, value);
    }
    Ok(())
}

#[test]
fn assignments_and_jq_paths_parse_like_the_shell() {
    let (n, c, j) = split_assignment("PLAN_ID=$(b24 plan x --params '{}' | jq -r .id)").unwrap();
    assert_eq!(
        (n.as_deref(), c.as_str(), j.as_deref()),
        (Some("PLAN_ID"), "b24 plan x --params '{}'", Some(".id"))
    );
    let (n, c, j) = split_assignment("ID=$(b24 call crm.lead.add)").unwrap();
    assert_eq!(
        (n.as_deref(), c.as_str(), j),
        (Some("ID"), "b24 call crm.lead.add", None)
    );
    assert!(split_assignment("X=$(b24 call a | head -1)").is_err());
    let v = serde_json::json!({"item":{"id":7,"tags":["a"]}});
    assert_eq!(jq_path(&v, ".item.id").as_deref(), Some("7"));
    assert_eq!(jq_path(&v, ".item.tags.0").as_deref(), Some("a"));
    assert_eq!(jq_path(&v, ".item.nope"), None);
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
    let (mut ran, mut portal) = (0, 0);
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
            portal += usize::from(c.portal_only);
            if let Err(e) = run_doc_line(&env, &cwd, &mut vars, &secrets, &c).await {
                failures.push(format!("{}: {}\n    -> {e}", c.file, c.line));
            }
        }
        // Whatever the commands wrote as NDJSON (exports, handler output) is valid NDJSON.
        for e in std::fs::read_dir(&cwd).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ndjson") {
                let text = read(&p);
                if !text.is_empty() && !text.ends_with('\n') {
                    failures.push(format!(
                        "{}: the last record has no newline, so the next one would run into it",
                        p.file_name().unwrap().to_string_lossy()
                    ));
                }
                for (n, l) in text.lines().enumerate() {
                    if serde_json::from_str::<Value>(l).is_err() {
                        failures.push(format!(
                            "{}: line {} is not one JSON value: {}",
                            p.file_name().unwrap().to_string_lossy(),
                            n + 1,
                            l.chars().take(120).collect::<String>()
                        ));
                    }
                }
            }
        }
        sb.shutdown().await;
    }
    eprintln!("ran {ran} documented commands ({portal} of them # portal-only, as dry runs)");
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

/// The migration guide maps every environment variable and flag of the original Python skill
/// (its v1 and v2 client and worker); a name missing here is a question a migrating user has
/// no answer to.
#[test]
fn migration_guide_maps_every_original_env_var_flag_and_file() {
    let guide = read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/migrating-from-the-python-skill.md"),
    );
    let env_vars = [
        "B24_DOMAIN",
        "B24_AUTH_MODE",
        "B24_WEBHOOK_USER_ID",
        "B24_WEBHOOK_CODE",
        "B24_ACCESS_TOKEN",
        "B24_REFRESH_TOKEN",
        "B24_CLIENT_ID",
        "B24_CLIENT_SECRET",
        "B24_METHOD_ALLOWLIST",
        "B24_PACKS",
        "B24_AUDIT_FILE",
        "B24_REQUIRE_PLAN",
        "B24_PLAN_FILE",
        "B24_PLAN_TTL_SEC",
        "B24_IDEMPOTENCY_FILE",
        "B24_IDEMPOTENCY_TTL_SEC",
        "B24_RATE_LIMITER",
        "B24_RATE_LIMITER_FILE",
        "B24_RATE_LIMITER_RATE",
        "B24_RATE_LIMITER_BURST",
        "B24_RATE_LIMITER_TTL_SEC",
        "B24_RUN_INTEGRATION",
        "B24_SMOKE_WRITE",
    ];
    let flags = [
        "--params",
        "--rest-v3",
        "--auto-refresh",
        "--mask-secrets",
        "--no-mask-secrets",
        "--method-allowlist",
        "--packs",
        "--list-packs",
        "--allow-unlisted",
        "--confirm-write",
        "--confirm-destructive",
        "--audit-file",
        "--no-audit",
        "--plan-only",
        "--execute-plan",
        "--plan-file",
        "--plan-ttl-sec",
        "--require-plan",
        "--idempotency-key",
        "--idempotency-file",
        "--idempotency-ttl-sec",
        "--no-idempotency",
        "--out",
        "--max-items",
        "--preflight",
        // worker
        "--sleep",
        "--once",
        "--max-retries",
        "--state-file",
        "--dlq-file",
        "--application-token",
        "--lock-file",
        "--redrive",
        "--bind-offline",
    ];
    let files = [
        "bitrix24_client.py",
        "offline_sync_worker.py",
        "method_risk.json",
        "required_params.json",
        "references/bitrix24.md",
        "packs.md",
        "agents/openai.yaml",
        ".env.example",
        "bitrix24_audit.jsonl",
        "bitrix24_plans.json",
        "bitrix24_idempotency.json",
        "bitrix24_rate_limiter.json",
        "offline_retry_state.json",
        "offline_dlq.jsonl",
    ];
    for name in env_vars.iter().chain(&flags) {
        assert!(
            guide.contains(&format!("`{name}")),
            "the migration guide does not map `{name}`"
        );
    }
    for name in files {
        assert!(
            guide.contains(name),
            "the migration guide does not map {name}"
        );
    }
}
