//! A deliberately small YAML reader for the skill's frontmatter and agents/openai.yaml.

use serde_json::{Map, Value};

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

pub fn yaml(text: &str) -> Result<Value, String> {
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

pub fn frontmatter(skill_md: &str) -> (String, String) {
    let rest = skill_md
        .strip_prefix("---\n")
        .expect("SKILL.md starts with `---`");
    let end = rest
        .find("\n---\n")
        .expect("frontmatter is closed by `---`");
    (rest[..end].to_string(), rest[end + 5..].to_string())
}
