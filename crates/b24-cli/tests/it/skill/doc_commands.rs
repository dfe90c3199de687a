//! Finding the `b24` commands in the skill's markdown and running them the way a shell would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{read, skill_dir};
use crate::support::Env;

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

pub struct DocCommand {
    pub file: String,
    pub line: String,
    /// The block starts with `# with OAuth app auth`: run it with the app's tokens.
    pub oauth: bool,
    /// The line carries `# portal-only`: the sandbox does not emulate this method, so the line
    /// is checked with `--dry-run` (parsing, gate, risk, confirmation flags) instead of sent.
    pub portal_only: bool,
}

/// The trailing comment that marks a command for a method the sandbox does not emulate.
const PORTAL_ONLY: &str = "# portal-only";

/// The placeholder a `# portal-only` assignment stores (a record id the portal would return).
const PORTAL_ONLY_ID: &str = "1";

/// SKILL.md's references: references/*.md and references/packs/*.md, sorted.
pub fn reference_files() -> Vec<PathBuf> {
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

pub fn bash_blocks(md: &str) -> Vec<Vec<String>> {
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

pub fn documented_commands() -> Vec<Vec<DocCommand>> {
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
pub fn shell_words(line: &str, vars: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
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
pub fn shell_words_quote_and_expand_like_sh() {
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
pub async fn run_doc_line(
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
