//! `b24 batch`: run many commands in batches of 50, with $result references.
//!
//! Input: a JSON object `{key: {method, params}}` or `{key: "method?query"}`, a JSON array of
//! `{key?, method, params}` objects or `"method?query"` strings, or NDJSON (one command a line),
//! from FILE, `-`/stdin, and/or repeated `--cmd`. Output: one NDJSON line per command, in input
//! order: `{key, status: ok|error|not_executed|unknown, result|error|reason}`.

use std::io::Read;
use std::time::Instant;

use b24_guard::gate::{BatchCommandSpec, BatchRequest, BatchRun, BatchTally, NoPerson, Origin};
use serde_json::{Value, json};

use crate::exec;
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 batch --cmd '{\"key\":\"me\",\"method\":\"user.current\"}' \\
            --cmd '{\"key\":\"leads\",\"method\":\"crm.lead.list\",\"params\":{\"filter\":{\"ASSIGNED_BY_ID\":\"$result[me][ID]\"}}}'
  b24 batch cmds.json                  # {\"a\": {\"method\": \"crm.lead.get\", \"params\": {\"id\": 1}}, \"b\": \"user.current\"}
  jq -c '.[]' leads.json | jq -c '{method:\"crm.lead.add\",params:{fields:.}}' | b24 batch - --confirm-write
  b24 batch big.json --halt --dry-run

Any number of commands: they are sent 50 to a request. `$result[key][path]` refers to an
earlier command; a reference to a failed command is reported as an error and never sent.
Output: one NDJSON line per command (default); -o csv|table has the columns key, status,
result, error, reason (nested values as JSON); -o json one array.
Exit code: 0 all ok, 1 some commands failed or were not executed, 7 a write's outcome is unknown.")]
pub struct Args {
    /// File with the commands (JSON object, JSON array or NDJSON); `-` for stdin.
    #[arg(value_name = "FILE|-")]
    pub file: Option<String>,
    /// One command as JSON (`{"key":..,"method":..,"params":{..}}` or `"method?query"`); repeatable.
    #[arg(long = "cmd", value_name = "JSON")]
    pub cmds: Vec<String>,
    /// Stop at the first failing command; later ones are not executed.
    #[arg(long)]
    pub halt: bool,
    /// Allow writes (add/update/...).
    #[arg(long)]
    pub confirm_write: bool,
    /// Allow destructive commands (delete/...).
    #[arg(long)]
    pub confirm_destructive: bool,
    /// Print the commands as they would be sent (with their request number); send nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: crate::render::OutputArgs,
}

/// A parsed input command.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Params {
        key: String,
        method: String,
        params: Value,
    },
    Text {
        key: String,
        text: String,
    },
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit::new(exit::USAGE, msg.into())
}

/// One command from a JSON value; `key` is the default key (object key or position).
fn one(key: String, v: &Value) -> anyhow::Result<Input> {
    match v {
        Value::String(s) => Ok(Input::Text {
            key,
            text: s.clone(),
        }),
        Value::Object(o) => {
            let key = match o.get("key") {
                Some(Value::String(k)) => k.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => key,
            };
            let method = o
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| usage(format!("command `{key}` has no \"method\"")))?
                .to_string();
            let params = o.get("params").cloned().unwrap_or(json!({}));
            if !params.is_object() && !params.is_array() {
                return Err(usage(format!(
                    "command `{key}`: \"params\" must be a JSON object or array"
                )));
            }
            Ok(Input::Params {
                key,
                method,
                params,
            })
        }
        _ => Err(usage(format!(
            "command `{key}` must be an object {{method, params}} or a \"method?query\" string"
        ))),
    }
}

/// Parse commands from text: a JSON object/array, else NDJSON.
pub fn parse_input(text: &str, first_index: usize) -> anyhow::Result<Vec<Input>> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| one((first_index + i).to_string(), c))
                .collect(),
            Value::Object(o) if o.contains_key("method") => {
                Ok(vec![one(first_index.to_string(), &Value::Object(o))?])
            }
            Value::Object(o) => o.iter().map(|(k, c)| one(k.clone(), c)).collect(),
            s @ Value::String(_) => Ok(vec![one(first_index.to_string(), &s)?]),
            _ => Err(usage("commands must be a JSON object, array or NDJSON")),
        };
    }
    let mut out = Vec::new();
    for (n, line) in t.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| usage(format!("line {}: not valid JSON: {e}", n + 1)))?;
        out.push(one((first_index + out.len()).to_string(), &v)?);
    }
    Ok(out)
}

fn read_all(args: &Args) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let stdin_text = |what: &str| -> anyhow::Result<String> {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| usage(format!("reading {what}: {e}")))?;
        Ok(s)
    };
    match args.file.as_deref() {
        Some("-") => inputs.extend(parse_input(&stdin_text("stdin")?, 0)?),
        Some(path) => {
            let s = std::fs::read_to_string(path).map_err(|e| usage(format!("{path}: {e}")))?;
            inputs.extend(parse_input(&s, 0)?);
        }
        None if args.cmds.is_empty() => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                return Err(usage(
                    "no commands: give a FILE, `-` for stdin, or --cmd (see --help)",
                ));
            }
            inputs.extend(parse_input(&stdin_text("stdin")?, 0)?);
        }
        None => {}
    }
    for c in &args.cmds {
        let v: Value =
            serde_json::from_str(c).map_err(|e| usage(format!("--cmd: not valid JSON: {e}")))?;
        inputs.push(one(inputs.len().to_string(), &v)?);
    }
    if inputs.is_empty() {
        return Err(usage("no commands given"));
    }
    Ok(inputs)
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let started = Instant::now();
    let inputs = read_all(&args)?;
    let methods: std::collections::HashMap<String, String> = inputs
        .iter()
        .map(|i| match i {
            Input::Params { key, method, .. } => (key.clone(), method.clone()),
            Input::Text { key, text } => (
                key.clone(),
                text.split('?').next().unwrap_or_default().to_string(),
            ),
        })
        .collect();
    let commands = inputs
        .into_iter()
        .map(|i| match i {
            Input::Params {
                key,
                method,
                params,
            } => BatchCommandSpec::Params {
                key,
                method,
                params,
            },
            Input::Text { key, text } => BatchCommandSpec::Text { key, text },
        })
        .collect();
    let req = BatchRequest {
        commands,
        halt: args.halt,
        confirm_write: args.confirm_write,
        confirm_destructive: args.confirm_destructive,
        dry_run: args.dry_run,
    };
    let gate = exec::gate(g, Origin::Cli)?;
    let (results, requests, retries) =
        match gate.batch(req, &NoPerson).await.map_err(exec::gate_error)? {
            BatchRun::DryRun(lines) => {
                for l in &lines {
                    crate::out::line(l)?;
                }
                return Ok(exit::OK);
            }
            BatchRun::Done {
                results,
                requests,
                retries,
                ..
            } => (results, requests, retries),
        };
    let format = args.output.format(crate::render::Format::Ndjson);
    let mut tally = BatchTally::default();
    let mut closed = false;
    if format != crate::render::Format::Ndjson {
        let lines: Vec<Value> = results
            .iter()
            .map(|(key, o)| with_fix(tally.add(key, o).0, &methods))
            .collect();
        let hint = ["key", "status", "result", "error", "reason"]
            .map(String::from)
            .to_vec();
        if let Err(e) = crate::render::print(format, hint, &lines)
            && !crate::out::is_closed(&e)
        {
            return Err(e);
        }
    } else {
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        for (key, o) in &results {
            let line = with_fix(tally.add(key, o).0, &methods);
            if !closed && writeln!(out, "{line}").is_err() {
                // The reader went away: keep counting, so the exit code still tells the truth.
                closed = true;
            }
        }
        let _ = out.flush();
    }
    let BatchTally {
        ok,
        failed,
        skipped,
        unknown,
    } = tally;
    if !g.quiet {
        crate::errln!(
            "b24 batch: {} commands: {ok} ok, {failed} error, {skipped} not executed{}; {requests} requests, {retries} retries, {:.1} s",
            results.len(),
            if unknown > 0 {
                format!(", {unknown} outcome unknown")
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if unknown > 0 {
        exit::OUTCOME_UNKNOWN
    } else if failed + skipped > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

/// A failed command's line carries the fix for its portal error (the library's table).
fn with_fix(mut line: Value, methods: &std::collections::HashMap<String, String>) -> Value {
    if line["status"] != "error" {
        return line;
    }
    let key = line["key"].as_str().unwrap_or_default().to_string();
    let method = methods.get(&key).map(String::as_str).unwrap_or_default();
    if let Some(err) = line.get_mut("error").and_then(Value::as_object_mut) {
        let code = err.get("code").and_then(Value::as_str).unwrap_or_default();
        let desc = err
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if matches!(
            code,
            "REFERENCE_FAILED" | "INVALID_BATCH" | "TRANSIENT" | "REFUSED"
        ) {
            return line;
        }
        let f = b24_guard::fixes::portal_error(code, desc, method);
        err.insert("meaning".into(), json!(f.meaning));
        err.insert("fix".into(), json!(f.fix));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape() {
        let a = parse_input(
            r#"{"a": {"method": "crm.lead.get", "params": {"id": 1}}, "b": "user.current"}"#,
            0,
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert!(matches!(&a[1], Input::Text { key, text } if key == "b" && text == "user.current"));
        let b = parse_input(
            r#"[{"method": "x.get"}, "y.get?id=1", {"key": "k", "method": "z.get"}]"#,
            0,
        )
        .unwrap();
        assert!(matches!(&b[0], Input::Params { key, .. } if key == "0"));
        assert!(matches!(&b[2], Input::Params { key, .. } if key == "k"));
        let c = parse_input("{\"method\":\"a.get\"}\n\n\"b.get\"\n", 0).unwrap();
        assert_eq!(c.len(), 2);
        assert!(parse_input("{\"method\": 1}", 0).is_err());
        assert!(parse_input("not json\n", 0).is_err());
    }
}
