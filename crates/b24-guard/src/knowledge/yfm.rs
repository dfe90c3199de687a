//! The few pieces of Yandex Flavored Markdown the documentation pages use — headings with
//! anchors, fenced code, and `#| … |#` tables whose cells may hold lists, code and nested
//! tables — read into blocks, exactly enough for [`super::markdown`] to find the facts.

/// A markdown heading: level, text without the anchor, anchor.
#[derive(Debug, Clone)]
pub(super) struct Heading {
    pub level: usize,
    pub text: String,
    pub anchor: Option<String>,
}

/// A block of the page: a heading, a table (its rows), a fenced code block, or a text line.
#[derive(Debug, Clone)]
pub(super) enum Block {
    Heading(Heading),
    Table(Vec<Row>),
    Code { lang: String, body: String },
    Text(String),
}

/// One table row: its cells (the first holds the name and type).
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub cells: Vec<String>,
}

pub(super) fn heading(line: &str) -> Option<Heading> {
    let t = line.trim_end();
    let level = t.bytes().take_while(|&b| b == b'#').count();
    if level == 0 || level > 6 || !t[level..].starts_with(' ') {
        return None;
    }
    let mut text = t[level..].trim().to_string();
    let mut anchor = None;
    if let Some(i) = text.rfind("{#")
        && text.ends_with('}')
    {
        anchor = Some(text[i + 2..text.len() - 1].trim().to_string());
        text = text[..i].trim().to_string();
    }
    Some(Heading {
        level,
        text,
        anchor,
    })
}

/// Split the page into blocks. Nested tables stay inside their cell's text.
pub(super) fn blocks(page: &str) -> Vec<Block> {
    let lines: Vec<&str> = page.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if let Some(fence) = t.strip_prefix("```") {
            let lang = fence.trim().to_ascii_lowercase();
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim().starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            out.push(Block::Code { lang, body });
            i += 1;
            continue;
        }
        if t == "#|" {
            let (rows, next) = table(&lines, i + 1);
            out.push(Block::Table(rows));
            i = next;
            continue;
        }
        if let Some(h) = heading(line) {
            out.push(Block::Heading(h));
        } else {
            out.push(Block::Text(line.to_string()));
        }
        i += 1;
    }
    out
}

/// Read a table starting after its `#|`; returns its rows and the line after its `|#`.
pub(super) fn table(lines: &[&str], mut i: usize) -> (Vec<Row>, usize) {
    let mut depth = 0usize;
    let mut fence = false;
    let mut raw_rows: Vec<String> = Vec::new();
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        if t.starts_with("```") {
            fence = !fence;
        }
        if !fence {
            if t == "#|" || t.ends_with(" #|") {
                depth += 1;
            } else if t == "|#" {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            if depth == 0 && t.starts_with("||") && !t.starts_with("|||") {
                raw_rows.push(String::new());
            }
        }
        if let Some(r) = raw_rows.last_mut() {
            r.push_str(line);
            r.push('\n');
        }
    }
    let rows = raw_rows.iter().map(|r| split_row(r)).collect();
    (rows, i)
}

/// The cells of a raw row (`|| a | b ||`): split on single `|` outside backticks, nested
/// tables and code fences.
pub(super) fn split_row(raw: &str) -> Row {
    let body = raw.trim();
    let body = body.strip_prefix("||").unwrap_or(body);
    let body = body.trim_end();
    let body = body.strip_suffix("||").unwrap_or(body);
    let mut cells: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut depth = 0usize;
    let mut fence = false;
    for line in body.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with("```") {
            fence = !fence;
        }
        if !fence && (t == "#|" || t.ends_with(" #|")) {
            depth += 1;
        }
        if fence || depth > 0 {
            cur.extend_from_slice(line.as_bytes());
            if !fence && t == "|#" {
                depth = depth.saturating_sub(1);
            }
            continue;
        }
        // a backtick never spans lines in these tables
        let mut tick = false;
        let b = line.as_bytes();
        let mut k = 0;
        while k < b.len() {
            let c = b[k];
            if c == b'`' {
                tick = !tick;
            }
            if c == b'|' && b.get(k + 1) == Some(&b'|') {
                cur.extend_from_slice(b"||");
                k += 2;
                continue;
            }
            if c == b'|' && !tick && cells.len() < 8 {
                cells.push(std::mem::take(&mut cur));
                k += 1;
                continue;
            }
            cur.push(c);
            k += 1;
        }
    }
    cells.push(cur);
    Row {
        cells: cells
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect(),
    }
}

/// The name, required mark and type of a parameter row's first cell, or `None` for a header
/// row or a row without a bold name.
pub(super) fn name_cell(cell: &str) -> Option<(String, bool, String)> {
    let t = cell.trim();
    let start = t.find("**")?;
    let rest = &t[start + 2..];
    let end = rest.find("**")?;
    let mut name = rest[..end].trim().to_string();
    let after = &rest[end + 2..];
    let mut required = after.starts_with('*') || after.starts_with("\\*");
    if let Some(n) = name.strip_suffix("\\*").or_else(|| name.strip_suffix('*')) {
        name = n.trim().to_string();
        required = true;
    }
    name = name.replace('\\', "").trim_matches('`').trim().to_string();
    let after = after.trim_start_matches("\\*").trim_start_matches('*');
    let ty = first_backticked(after).unwrap_or_default();
    Some((name, required, ty))
}

pub(super) fn first_backticked(s: &str) -> Option<String> {
    let a = s.find('`')?;
    let rest = &s[a + 1..];
    let b = rest.find('`')?;
    let v = rest[..b].trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Header rows name the columns (`Name`, `Parameter`, `Field`, …) with `type` in backticks.
pub(super) fn is_header(name: &str, ty: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let n = n.split(['/', ' ']).next().unwrap_or("");
    matches!(
        n,
        "name" | "parameter" | "field" | "title" | "parameters" | "fields"
    ) && (ty.is_empty() || ty.eq_ignore_ascii_case("type"))
}

/// A table is a parameter table when its header row is one.
pub(super) fn is_param_table(rows: &[Row]) -> bool {
    rows.first()
        .and_then(|r| r.cells.first())
        .and_then(|c| name_cell(c))
        .map(|(n, _, t)| is_header(&n, &t))
        .unwrap_or(false)
}
