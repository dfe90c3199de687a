//! How records are printed: `-o json|ndjson|csv|table`, in one place for every command that
//! prints records (call, list, export, batch, methods, audit, dlq, plan).
//!
//! - `json`: one JSON document. Pretty on a terminal, compact in a pipe or a file (a program
//!   reads it there, and one line per document is what line-oriented tools expect); `--pretty`
//!   or `--compact` force either.
//! - `ndjson`: one compact JSON value a line (what `jq -c`, `grep` and a resumable export want).
//! - `csv`: RFC 4180 via the `csv` crate, with a header. Columns come from `--select` (or the
//!   params' `select`) in that order, else from the first record's keys; the ID comes first
//!   when the list returns it but the selection did not name it. Keys a later record adds are
//!   left out, so every row has the same columns. Nested values are written as compact JSON.
//! - `table`: for a person, fitted to the terminal's width (`COLUMNS` when set, so a table in a
//!   pipe can be fitted too); long cells wrap.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Map, Value};

/// An output format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON document (pretty on a terminal, compact otherwise).
    Json,
    /// One JSON value a line.
    Ndjson,
    /// Comma-separated values with a header row.
    Csv,
    /// A table fitted to the terminal.
    Table,
}

/// The output flags of a command that prints records.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output format: json, ndjson, csv or table (the default depends on the command).
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
    /// Pretty-print JSON even when stdout is not a terminal.
    #[arg(long, conflicts_with = "compact")]
    pub pretty: bool,
    /// Compact JSON even on a terminal (the default in pipes and files).
    #[arg(long)]
    pub compact: bool,
}

/// 0 = decide by the terminal, 1 = pretty, 2 = compact.
static STYLE: AtomicU8 = AtomicU8::new(0);

impl OutputArgs {
    /// The format to use, `default` when `-o` was not given. Also records `--pretty` /
    /// `--compact` for every JSON this process prints.
    pub fn format(&self, default: Format) -> Format {
        if self.pretty {
            STYLE.store(1, Ordering::Relaxed);
        } else if self.compact {
            STYLE.store(2, Ordering::Relaxed);
        }
        self.output.unwrap_or(default)
    }
}

/// Whether JSON on stdout is pretty-printed: `--pretty`, `--compact`, else only on a terminal.
pub fn pretty_stdout() -> bool {
    match STYLE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => std::io::stdout().is_terminal(),
    }
}

/// Whether `--pretty` was given (JSON written into a file is compact unless it was).
pub fn pretty_forced() -> bool {
    STYLE.load(Ordering::Relaxed) == 1
}

/// The columns named by a `select` in params (case-insensitive key); wildcards (`*`, `UF_*`)
/// name no column and are left out.
pub fn select_columns(params: &Value) -> Vec<String> {
    let Some(obj) = params.as_object() else {
        return Vec::new();
    };
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("select"))
        .and_then(|(_, v)| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty() && !s.contains('*'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The records in a method's result: a list's items, or the one record it is.
pub fn records_of(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => match o.get("items") {
            Some(Value::Array(a)) => a.clone(),
            _ => vec![v.clone()],
        },
        other => vec![other.clone()],
    }
}

/// One cell: strings as they are, null empty, anything else compact JSON.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A record as an object (a bare value becomes `{"value": v}`).
fn as_object(v: &Value) -> std::borrow::Cow<'_, Map<String, Value>> {
    match v {
        Value::Object(o) => std::borrow::Cow::Borrowed(o),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other.clone());
            std::borrow::Cow::Owned(m)
        }
    }
}

/// A record writer for one format. Streaming for json, ndjson and csv; a table is laid out at
/// [`Records::finish`] (its widths depend on every row).
pub struct Records<W: Write> {
    w: W,
    format: Format,
    pretty: bool,
    hint: Vec<String>,
    columns: Option<Vec<String>>,
    /// The csv header is already in the output (a resumed export).
    header_done: bool,
    rows: Vec<Vec<String>>,
    count: u64,
}

impl<W: Write> Records<W> {
    /// A writer; `hint` is the selected columns (may be empty), `pretty` applies to `json`.
    pub fn new(w: W, format: Format, pretty: bool, hint: Vec<String>) -> Records<W> {
        Records {
            w,
            format,
            pretty,
            hint,
            columns: None,
            header_done: false,
            rows: Vec::new(),
            count: 0,
        }
    }

    /// Continue an output whose csv header (with these columns) was already written.
    pub fn resume_columns(mut self, columns: Option<Vec<String>>) -> Records<W> {
        if let Some(c) = columns {
            self.columns = Some(c);
            self.header_done = true;
        }
        self
    }

    /// The csv/table columns, once known.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// The underlying writer (e.g. to drain a page's bytes).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    fn columns_for(&mut self, first: &Map<String, Value>) -> Vec<String> {
        if let Some(c) = &self.columns {
            return c.clone();
        }
        let mut cols: Vec<String> = if self.hint.is_empty() {
            first.keys().cloned().collect()
        } else {
            self.hint.clone()
        };
        // The ID is always exported: show it first when the selection did not name it.
        for id in ["ID", "id"] {
            if first.contains_key(id) && !cols.iter().any(|c| c == id) {
                cols.insert(0, id.to_string());
                break;
            }
        }
        if cols.is_empty() {
            cols.push("value".into());
        }
        self.columns = Some(cols.clone());
        cols
    }

    fn csv_line(fields: &[String]) -> std::io::Result<Vec<u8>> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        w.write_record(fields).map_err(std::io::Error::other)?;
        w.into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Write one record.
    pub fn push(&mut self, v: &Value) -> std::io::Result<()> {
        match self.format {
            Format::Ndjson => {
                serde_json::to_writer(&mut self.w, v)?;
                self.w.write_all(b"\n")?;
            }
            Format::Json => {
                let sep: &[u8] = match (self.count, self.pretty) {
                    (0, true) => b"[\n",
                    (0, false) => b"[",
                    (_, true) => b",\n",
                    (_, false) => b",",
                };
                self.w.write_all(sep)?;
                if self.pretty {
                    let s = serde_json::to_string_pretty(v)?;
                    let mut first = true;
                    for line in s.lines() {
                        if !first {
                            self.w.write_all(b"\n")?;
                        }
                        first = false;
                        self.w.write_all(b"  ")?;
                        self.w.write_all(line.as_bytes())?;
                    }
                } else {
                    serde_json::to_writer(&mut self.w, v)?;
                }
            }
            Format::Csv | Format::Table => {
                let obj = as_object(v);
                let cols = self.columns_for(&obj);
                let row: Vec<String> = cols.iter().map(|c| cell(obj.get(c))).collect();
                if self.format == Format::Csv {
                    if !self.header_done {
                        let h = Self::csv_line(&cols)?;
                        self.w.write_all(&h)?;
                        self.header_done = true;
                    }
                    let line = Self::csv_line(&row)?;
                    self.w.write_all(&line)?;
                } else {
                    self.rows.push(row);
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    /// End the output (close the JSON array, lay out the table) and return the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        match self.format {
            Format::Ndjson => {}
            Format::Json => {
                let end: &[u8] = match (self.count, self.pretty) {
                    (0, _) => b"[]\n",
                    (_, true) => b"\n]\n",
                    (_, false) => b"]\n",
                };
                self.w.write_all(end)?;
            }
            Format::Csv => {
                if !self.header_done && !self.hint.is_empty() {
                    let h = Self::csv_line(&self.hint)?;
                    self.w.write_all(&h)?;
                }
            }
            Format::Table => {
                let cols = self.columns.clone().unwrap_or_else(|| self.hint.clone());
                if !cols.is_empty() {
                    let t = table(&cols, std::mem::take(&mut self.rows));
                    self.w.write_all(t.as_bytes())?;
                    self.w.write_all(b"\n")?;
                }
            }
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

/// The width to fit a table to: `COLUMNS`, else the terminal's, else 120.
fn table_width() -> u16 {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|&c| c >= 20)
    {
        return c;
    }
    terminal_width().unwrap_or(120)
}

fn terminal_width() -> Option<u16> {
    let t = comfy_table::Table::new();
    if std::io::stdout().is_terminal() {
        t.width()
    } else {
        None
    }
}

/// A cell (or column name) made safe for a terminal: control characters other than a line
/// break are shown as `\u{1b}`-style escapes. A table is read by a person at a terminal, and
/// its text comes from portal data anyone can write (a web form's lead title): printed raw,
/// ESC/CSI/OSC sequences could rewrite the screen, hide rows or set the clipboard.
pub(crate) fn for_terminal(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn table(cols: &[String], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::DynamicFullWidth)
        .set_width(table_width())
        .set_header(cols.iter().map(|c| for_terminal(c)));
    for r in rows {
        t.add_row(r.iter().map(|c| for_terminal(c)).collect::<Vec<_>>());
    }
    // `DynamicFullWidth` stretches narrow tables to the whole width; only do that when the
    // content needs it.
    let natural = {
        let mut n = comfy_table::Table::new();
        n.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        n.set_header(cols.iter().map(|c| for_terminal(c)));
        for r in t.row_iter() {
            n.add_row(r.cell_iter().map(|c| c.content()).collect::<Vec<_>>());
        }
        n
    };
    let natural_width = natural
        .to_string()
        .lines()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    if natural_width <= table_width() as usize {
        return natural.to_string();
    }
    t.to_string()
}

/// Print records to stdout in `format` (stdout closed early is [`crate::out::Closed`]).
pub fn print(format: Format, hint: Vec<String>, records: &[Value]) -> anyhow::Result<()> {
    let mut r = Records::new(Vec::new(), format, pretty_stdout(), hint);
    for v in records {
        r.push(v)?;
    }
    let bytes = r.finish()?;
    crate::out::bytes(&bytes)
}

/// Print one JSON document (a call's result, a plan) in `format`: `json` as it is, `ndjson`
/// one line (a list's items one a line), `csv`/`table` its records.
pub fn value(format: Format, hint: Vec<String>, v: &Value) -> anyhow::Result<()> {
    match format {
        Format::Json => crate::out::pretty(v),
        // A list's items one a line (v2 arrays and REST 3.0 `{"items": [...]}` alike).
        Format::Ndjson if v.is_array() || v.get("items").is_some_and(Value::is_array) => {
            print(format, hint, &records_of(v))
        }
        Format::Ndjson => crate::out::line(v),
        Format::Csv | Format::Table => print(format, hint, &records_of(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(format: Format, hint: &[&str], recs: &[Value]) -> String {
        let mut r = Records::new(
            Vec::new(),
            format,
            false,
            hint.iter().map(|s| s.to_string()).collect(),
        );
        for v in recs {
            r.push(v).unwrap();
        }
        String::from_utf8(r.finish().unwrap()).unwrap()
    }

    #[test]
    fn csv_quotes_and_keeps_the_selected_order() {
        let recs = [
            json!({"ID": "1", "TITLE": "a, \"b\"\nc", "X": {"k": 1}}),
            json!({"TITLE": "t2", "ID": "2", "EXTRA": 5}),
        ];
        let s = render(Format::Csv, &["TITLE", "X"], &recs);
        assert_eq!(
            s,
            "ID,TITLE,X\n1,\"a, \"\"b\"\"\nc\",\"{\"\"k\"\":1}\"\n2,t2,\n"
        );
        // From the first record's keys when nothing is selected.
        let s = render(Format::Csv, &[], &recs);
        assert!(s.starts_with("ID,TITLE,X\n"), "{s}");
        // No records, selected columns: the header alone.
        assert_eq!(render(Format::Csv, &["A", "B"], &[]), "A,B\n");
    }

    #[test]
    fn json_is_one_document_and_ndjson_one_line_each() {
        let recs = [json!({"a": 1}), json!([1, 2])];
        assert_eq!(render(Format::Json, &[], &recs), "[{\"a\":1},[1,2]]\n");
        assert_eq!(render(Format::Json, &[], &[]), "[]\n");
        assert_eq!(render(Format::Ndjson, &[], &recs), "{\"a\":1}\n[1,2]\n");
        let mut r = Records::new(Vec::new(), Format::Json, true, vec![]);
        r.push(&json!({"a": 1})).unwrap();
        let s = String::from_utf8(r.finish().unwrap()).unwrap();
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, json!([{"a": 1}]));
        assert!(s.contains("\n    \"a\": 1"), "{s}");
    }

    #[test]
    fn select_columns_skip_wildcards() {
        assert_eq!(
            select_columns(&json!({"SELECT": ["ID", "UF_*", "*", "TITLE"]})),
            vec!["ID", "TITLE"]
        );
        assert!(select_columns(&json!({"filter": {}})).is_empty());
    }
}
