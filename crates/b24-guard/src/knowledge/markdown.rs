//! Reading the facts out of one documentation page (Yandex Flavored Markdown as the
//! `b24restdocs` repository writes it). Only names, types, required marks, backticked values
//! and JSON examples are kept; descriptions are read to find those and then dropped.
//!
//! The page layout it relies on: a parameter table (`#| || **Name** `type` | **Description** ||
//! … |#`, a trailing `*` on the name marks it required) before the code examples, nested tables
//! under headings whose anchor or words name the parameter (`### Parameter fields {#fields}`),
//! a cURL example with a JSON body, and a response section with a JSON example and a
//! returned-data table. Anything that does not fit is left out, never guessed.

use serde_json::{Map, Value};

use super::yfm::{Block, Heading, Row, blocks, first_backticked, is_param_table, name_cell};
use super::{DocStatus, MethodDoc, Param, ResultField};

/// A name that stands for many (`UF_CRM_...`, `PARENT_ID_{id}`, `field_n`, `0`, `1` …) or is
/// not a plain name at all: the list it is in is open.
fn is_pattern(name: &str) -> bool {
    name.is_empty()
        || name.contains("...")
        || name.contains('…')
        || name.contains(['{', '<', '*', '[', ' ', '|', '(', '='])
        || name.eq_ignore_ascii_case("field_n")
        || name.ends_with('_')
        || name.ends_with("N")
            && name.len() > 1
            && name.as_bytes()[name.len() - 2].is_ascii_lowercase()
        || name.bytes().all(|b| b.is_ascii_digit())
}

/// Values listed after "possible values" (or similar) in a description: the backticked token
/// that starts each list item.
fn allowed_values(desc: &str) -> Vec<String> {
    let lower = desc.to_ascii_lowercase();
    let markers = [
        "possible values",
        "allowed values",
        "acceptable values",
        "valid values",
        "available values",
        "can take the following values",
        "takes the following values",
        "one of the values",
        "one of the following",
        "supported values",
    ];
    let Some(at) = markers.iter().filter_map(|m| lower.find(m)).min() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut started = false;
    for line in desc[at..].lines().skip(1) {
        let t = line.trim();
        let item = t
            .strip_prefix("- ")
            .or_else(|| t.strip_prefix("* "))
            .map(str::trim);
        match item {
            Some(it) if it.starts_with('`') => {
                started = true;
                if let Some(v) = first_backticked(it)
                    && v.chars().count() <= 60
                    && !out.contains(&v)
                {
                    out.push(v);
                }
            }
            Some(_) => started = true,
            None if t.is_empty() && !started => {}
            None => break,
        }
        if out.len() >= 60 {
            break;
        }
    }
    out
}

/// A default given as a backticked value ("By default `N`", "default value — `0`").
fn default_value(desc: &str) -> Option<String> {
    let lower = desc.to_ascii_lowercase();
    for m in ["by default", "default value", "default is", "defaults to"] {
        if let Some(i) = lower.find(m) {
            // the value must follow at once (`By default — \`N\``), not a sentence later
            let rest = desc[i + m.len()..]
                .trim_start_matches([',', ':', ' ', '\u{2014}', '\u{2013}', '-', '='])
                .trim_start_matches("is ")
                .trim_start_matches("set to ");
            if rest.starts_with('`')
                && let Some(v) = first_backticked(rest)
                && v.chars().count() <= 40
            {
                return Some(v);
            }
        }
    }
    None
}

/// Parameters from a parameter table; `open` when a row stands for many names.
fn params_of(rows: &[Row]) -> (Vec<Param>, bool) {
    let mut out: Vec<Param> = Vec::new();
    let mut open = false;
    for r in rows.iter().skip(1) {
        let Some((name, required, ty)) = r.cells.first().and_then(|c| name_cell(c)) else {
            continue;
        };
        if is_pattern(&name) {
            open = true;
            continue;
        }
        if out.iter().any(|p| p.name == name) {
            continue;
        }
        let desc = r.cells.get(1..).map(|c| c.join("|")).unwrap_or_default();
        out.push(Param {
            name,
            ty: clean_type(&ty),
            required,
            values: allowed_values(&desc),
            default: default_value(&desc),
            fields: Vec::new(),
            open: false,
        });
    }
    (out, open)
}

fn clean_type(t: &str) -> String {
    t.trim().chars().take(40).collect()
}

/// Headings that end the parameter part of a page.
fn ends_params(h: &Heading) -> bool {
    // the page title (level 1) names the method, and may contain any word
    if h.level != 2 {
        return false;
    }
    let t = h.text.to_ascii_lowercase();
    [
        "example", "response", "returned", "success", "error", "continue", "result", "handling",
    ]
    .iter()
    .any(|w| t.contains(w))
}

fn is_response_heading(h: &Heading) -> bool {
    let t = h.text.to_ascii_lowercase();
    h.level == 2 && (t.contains("response") || t.contains("success") || t.contains("result"))
}

/// Words of a heading, for matching a nested section to its parameter.
fn heading_words(h: &Heading) -> Vec<String> {
    h.text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

/// The parameter a nested section is about: the anchor names it, or a word of the heading
/// does (`Parameter fields`, `Fields Parameter`, `Parameter \`params\``).
fn attach<'a>(params: &'a mut [Param], h: &Heading) -> Option<&'a mut Param> {
    let mut keys: Vec<String> = Vec::new();
    if let Some(a) = &h.anchor {
        keys.push(a.to_ascii_lowercase());
    }
    keys.extend(heading_words(h));
    for k in &keys {
        let k = k.rsplit('.').next().unwrap_or(k);
        if let Some(i) = find_param(params, k) {
            return Some(get_path(params, &i));
        }
    }
    None
}

/// Path (indices) of the first parameter named `k` without fields yet, breadth-first.
fn find_param(params: &[Param], k: &str) -> Option<Vec<usize>> {
    let mut queue: Vec<(Vec<usize>, &Param)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (vec![i], p))
        .collect();
    let mut at = 0;
    while at < queue.len() {
        let (path, p) = queue[at].clone();
        if p.name.eq_ignore_ascii_case(k) && p.fields.is_empty() {
            return Some(path);
        }
        for (j, c) in p.fields.iter().enumerate() {
            let mut np = path.clone();
            np.push(j);
            queue.push((np, c));
        }
        at += 1;
    }
    None
}

fn get_path<'a>(params: &'a mut [Param], path: &[usize]) -> &'a mut Param {
    let (first, rest) = path.split_first().expect("non-empty path");
    let mut p = &mut params[*first];
    for i in rest {
        p = &mut p.fields[*i];
    }
    p
}

/// The page mentions user fields (`UF_…`, "custom fields", "user fields"): the entity's field
/// set differs per portal.
fn has_user_fields(page: &str) -> bool {
    let l = page.to_ascii_lowercase();
    page.contains("UF_")
        || l.contains("custom field")
        || l.contains("user field")
        || l.contains("userfield")
        || l.contains("ufcrm")
}

/// Says the method takes no parameters.
fn says_no_params(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    [
        "no parameters",
        "without parameters",
        "does not take parameters",
        "does not accept parameters",
        "does not require parameters",
        "does not have parameters",
        "has no parameters",
        "takes no parameters",
        "parameters are not required",
        "no input parameters",
    ]
    .iter()
    .any(|m| l.contains(m))
}

/// Read one page. `method` is the catalog name (the page may document several spellings).
pub(super) fn parse_page(method: &str, page: &str) -> MethodDoc {
    let blocks = blocks(page);
    let end = blocks
        .iter()
        .position(|b| matches!(b, Block::Heading(h) if ends_params(h)))
        .unwrap_or(blocks.len());
    let head = &blocks[..end];
    let mut params: Vec<Param> = Vec::new();
    let mut status = DocStatus::Undocumented;
    let mut current: Option<Heading> = None;
    let mut top_done = false;
    let mut text_before = String::new();
    let user_fields = has_user_fields(page);
    for b in head {
        match b {
            Block::Heading(h) => current = Some(h.clone()),
            Block::Text(t) => {
                if !top_done {
                    text_before.push_str(t);
                    text_before.push('\n');
                }
            }
            Block::Code { .. } => {}
            Block::Table(rows) => {
                if !is_param_table(rows) {
                    continue;
                }
                let (ps, open) = params_of(rows);
                if !top_done {
                    top_done = true;
                    params = ps;
                    status = if open {
                        DocStatus::Open
                    } else if params.is_empty() {
                        DocStatus::None
                    } else {
                        DocStatus::Complete
                    };
                    continue;
                }
                let Some(h) = &current else { continue };
                if let Some(p) = attach(&mut params, h) {
                    let is_fields = p.name.eq_ignore_ascii_case("fields");
                    p.fields = ps;
                    p.open = open || (is_fields && user_fields);
                }
            }
        }
    }
    if !top_done && says_no_params(&text_before) {
        status = DocStatus::None;
    }
    // Positional forms (`?0=…&1[…]=…`) are described in prose, not tables: never enforce them.
    if status == DocStatus::Complete && page.contains("positional") {
        status = DocStatus::Open;
    }
    let (result, result_example) = response(&blocks[end..]);
    let mut doc = MethodDoc {
        method: method.to_string(),
        status,
        params,
        result,
        example: request_example(&blocks[end..]),
        result_example,
    };
    reconcile(&mut doc);
    doc
}

/// A page whose own example uses a name its table does not list is not a complete list: open
/// the level that misses it (the whole method, or that object parameter), so the strict check
/// never refuses what the documentation itself sends.
fn reconcile(doc: &mut MethodDoc) {
    let Some(x) = doc.example.clone() else { return };
    for _ in 0..32 {
        let Err(e) = super::check::check_against(doc, &x) else {
            return;
        };
        match e.parameter.split_once('.') {
            Some((top, _)) => match doc
                .params
                .iter_mut()
                .find(|p| p.name.eq_ignore_ascii_case(top))
            {
                Some(p) => p.open = true,
                None => doc.status = DocStatus::Open,
            },
            None => doc.status = DocStatus::Open,
        }
    }
    doc.status = DocStatus::Open;
}

/// The returned-data table and the `result` of the first JSON response example.
fn response(blocks: &[Block]) -> (Vec<ResultField>, Option<Value>) {
    let Some(start) = blocks
        .iter()
        .position(|b| matches!(b, Block::Heading(h) if is_response_heading(h)))
    else {
        return (Vec::new(), None);
    };
    let mut fields = Vec::new();
    let mut example = None;
    for b in &blocks[start..] {
        match b {
            Block::Heading(h)
                if h.level <= 2
                    && h.text.to_ascii_lowercase().contains("error")
                    && !fields.is_empty() =>
            {
                break;
            }
            Block::Code { lang, body }
                if example.is_none() && (lang == "json" || lang.is_empty()) =>
            {
                if let Ok(v) = serde_json::from_str::<Value>(body)
                    && let Some(r) = v.get("result")
                {
                    example = Some(shorten(r, 0));
                }
            }
            Block::Table(rows) if fields.is_empty() && is_param_table(rows) => {
                for r in rows.iter().skip(1) {
                    if let Some((name, _, ty)) = r.cells.first().and_then(|c| name_cell(c))
                        && !name.is_empty()
                        && name != "time"
                        && fields.len() < 60
                    {
                        fields.push(ResultField {
                            name,
                            ty: clean_type(&ty),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    (fields, example)
}

/// The JSON body of the first cURL example, without credentials, values shortened.
fn request_example(blocks: &[Block]) -> Option<Value> {
    for b in blocks {
        let Block::Code { body, .. } = b else {
            continue;
        };
        let Some(i) = body.find("-d '") else { continue };
        let rest = &body[i + 4..];
        let Some(j) = rest.rfind("' \\").or_else(|| rest.rfind('\'')) else {
            continue;
        };
        let json = unshell(&rest[..j]);
        if let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&json) {
            o.retain(|k, _| !k.eq_ignore_ascii_case("auth"));
            return Some(shorten(&Value::Object(o), 0));
        }
    }
    None
}

/// Replace shell interpolations (`'"$(date …)"'`) inside a single-quoted body by a marker.
fn unshell(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("'\"$(") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match tail.find(")\"'") {
            Some(j) => {
                out.push_str("<computed>");
                rest = &tail[j + 3..];
            }
            None => {
                rest = tail;
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Keep an example small: long strings cut, arrays to their first 3 items, objects to 30 keys,
/// depth at most 5.
pub(super) fn shorten(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) if s.chars().count() > 80 => {
            Value::String(s.chars().take(77).collect::<String>() + "...")
        }
        Value::Array(a) if depth >= 5 => Value::Array(if a.is_empty() {
            vec![]
        } else {
            vec![Value::String("...".into())]
        }),
        Value::Object(o) if depth >= 5 => {
            if o.is_empty() {
                Value::Object(Map::new())
            } else {
                Value::String("{...}".into())
            }
        }
        Value::Array(a) => Value::Array(a.iter().take(3).map(|x| shorten(x, depth + 1)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .take(30)
                .map(|(k, x)| (k.clone(), shorten(x, depth + 1)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::yfm::split_row;
    use super::*;

    const PAGE: &str = "# Update crm.deal.update\n\n## Method Parameters\n\n#|\n|| **Name**\n`type` | **Description** ||\n|| **id***\n[`integer`](../x.md) | Identifier ||\n|| **fields**\n[`object`](../x.md) | Fields, see [below](#fields) ||\n|| **params**\n[`object`](../x.md) | Params ||\n|#\n\n### Parameter fields {#fields}\n\n#|\n|| **Name**\n`type` | **Description** ||\n|| **OPENED**\n[`char`](x) | Open? Possible values:\n- `Y` — yes\n- `N` — no\n\nBy default `Y` ||\n|| **UF_CRM_...** | Custom fields ||\n|#\n\n## Code Examples\n\n```bash\ncurl -X POST \\\n-d '{\"id\":1,\"fields\":{\"OPENED\":\"Y\",\"BEGINDATE\":\"'\"$(date --iso-8601=seconds)\"'\"},\"auth\":\"x\"}' \\\nhttps://x/rest/crm.deal.update\n```\n\n## Response Handling\n\n```json\n{\"result\": true, \"time\": {}}\n```\n\n### Returned Data\n\n#|\n|| **Name**\n`type` | **Description** ||\n|| **result**\n[`boolean`](x) | Root ||\n|| **time**\n[`time`](x) | Time ||\n|#\n";

    #[test]
    fn reads_a_page() {
        let d = parse_page("crm.deal.update", PAGE);
        assert_eq!(d.status, DocStatus::Complete);
        let names: Vec<&str> = d.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["id", "fields", "params"]);
        assert!(d.params[0].required);
        assert_eq!(d.params[0].ty, "integer");
        let f = &d.params[1];
        assert_eq!(f.fields.len(), 1);
        assert!(f.open, "a pattern row opens the list");
        assert_eq!(f.fields[0].values, ["Y", "N"]);
        assert_eq!(f.fields[0].default.as_deref(), Some("Y"));
        assert_eq!(d.result.len(), 1);
        assert_eq!(d.result_example, Some(Value::Bool(true)));
        let x = d.example.unwrap();
        assert_eq!(x["fields"]["BEGINDATE"], "<computed>");
        assert!(x.get("auth").is_none());
    }

    #[test]
    fn no_parameters_is_a_statement() {
        let d = parse_page(
            "x.fields",
            "# X\n\nThe method returns fields. No parameters.\n\n## Code Examples\n",
        );
        assert_eq!(d.status, DocStatus::None);
        let d = parse_page(
            "x.y",
            "# X\n\nThe method does something.\n\n## Code Examples\n",
        );
        assert_eq!(d.status, DocStatus::Undocumented);
    }

    #[test]
    fn non_ascii_survives_the_splitter() {
        let r = split_row("|| **név** `string` | описание | x ||");
        assert!(r.cells[1].contains("описание"));
        assert_eq!(name_cell(&r.cells[0]).unwrap().0, "név");
    }
}
