//! Form decoder benchmark: our `b24_events::form` (the receiver's `scan` then `build`) against
//! `serde_qs` (the maintained crate for PHP/Rails bracket query strings) on realistic and
//! hostile Bitrix24 event bodies.
//!
//! ```text
//! cargo build --release -p b24-events --example form_bench
//! target/release/examples/form_bench            # every case, a side-by-side table
//! target/release/examples/form_bench --list     # the case names
//! target/release/examples/form_bench --one CASE ours|qs   # one parse (what the table runs)
//! ```
//!
//! Every case is first parsed once per decoder in a child process (this binary with `--one`),
//! on a thread with a 2 MiB stack — tokio's default for worker threads, where the receiver
//! parses — inside `catch_unwind`. A stack overflow aborts a process whatever catches panics,
//! so only a child survives it; the parent reads the child's exit status. The child prints what
//! the decoder returned and the growth of peak RSS (`VmHWM`) across the parse. Cases whose child
//! finished are then timed in this process: the median of N parses (result dropped inside the
//! timing), N chosen so each decoder gets about 0.3 s per case.
//!
//! `serde_qs` runs as a receiver would have to configure it for Bitrix24: form encoding on
//! (PHP sends brackets as `%5B`/`%5D`) and `max_depth` 32, our own depth limit, decoding into
//! `serde_json::Value`. It has no limit on body size, field count or key length; the body cap a
//! server puts in front of it is not modelled here (ours is part of the decoder, 256 KiB).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::{Duration, Instant};

use b24_events::form::{self, Limits};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// tokio's default worker-thread stack.
const STACK: usize = 2 * 1024 * 1024;
/// Time budget per decoder per case for the timing loop.
const BUDGET: Duration = Duration::from_millis(300);

struct Case {
    name: &'static str,
    what: &'static str,
    body: fn() -> Vec<u8>,
    /// Our limits; `None` = the defaults the receiver uses.
    ours: Option<fn() -> Limits>,
    /// serde_qs `max_depth`; `None` = 32.
    qs_depth: Option<usize>,
}

const CASES: &[Case] = &[
    Case {
        name: "deal-update",
        what: "ONCRMDEALUPDATE as Bitrix24 sends it",
        body: deal_update,
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "body-20k",
        what: "the same with 95 user fields (Cyrillic), 20 KB",
        body: body_20k,
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "deep-10000",
        what: "a[a][a]... 10,000 levels",
        body: || deep(10_000),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "deep-10000-nocap",
        what: "the same, serde_qs max_depth 10,000, our key cap lifted",
        body: || deep(10_000),
        ours: Some(|| Limits {
            max_key_len: usize::MAX,
            ..Limits::default()
        }),
        qs_depth: Some(10_000),
    },
    Case {
        name: "deep-40",
        what: "a[a]... 40 levels (key fits in 256 bytes)",
        body: || deep(40),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "fields-100k",
        what: "100,000 distinct fields (790 KB)",
        body: fields_100k,
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "fields-100k-nocap",
        what: "the same, our body cap lifted",
        body: fields_100k,
        ours: Some(|| Limits {
            max_body: usize::MAX,
            ..Limits::default()
        }),
        qs_depth: None,
    },
    Case {
        name: "dup-event",
        what: "event=ONCRMDEALUPDATE&event=ONAPPUNINSTALL",
        body: || b"event=ONCRMDEALUPDATE&event=ONAPPUNINSTALL&auth%5Bmember_id%5D=m".to_vec(),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "scalar-then-map",
        what: "data[x]=1&data[x][y]=2",
        body: || b"data[x]=1&data[x][y]=2".to_vec(),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "map-then-scalar",
        what: "data[x][y]=2&data[x]=1",
        body: || b"data[x][y]=2&data[x]=1".to_vec(),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "list",
        what: "auth[scope][]=crm&auth[scope][]=user",
        body: || b"auth%5Bscope%5D%5B%5D=crm&auth%5Bscope%5D%5B%5D=user".to_vec(),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "long-key",
        what: "one 100,000-byte key",
        body: || {
            let mut b = vec![b'k'; 100_000];
            b.extend_from_slice(b"=1");
            b
        },
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "bad-percent",
        what: "event=ONCRM%zzDEALUPDATE",
        body: || b"event=ONCRM%zzDEALUPDATE&auth%5Bmember_id%5D=m".to_vec(),
        ours: None,
        qs_depth: None,
    },
    Case {
        name: "bad-utf8",
        what: "event=%ff%fe (decodes to invalid UTF-8)",
        body: || b"event=%ff%fe&auth%5Bmember_id%5D=m".to_vec(),
        ours: None,
        qs_depth: None,
    },
];

/// PHP's `urlencode` of one key or value (what `http_build_query` sends).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form_of(pairs: &[(String, String)]) -> Vec<u8> {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    parts.join("&").into_bytes()
}

/// The fields of an online ONCRMDEALUPDATE delivery (docs/protocol.md §9.2; the sandbox's
/// `online_payload` sends the same shape).
fn deal_update_pairs() -> Vec<(String, String)> {
    let p = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        p("event", "ONCRMDEALUPDATE"),
        p("event_handler_id", "17"),
        p("data[FIELDS][ID]", "7405"),
        p("ts", "1764550000"),
        p(
            "auth[access_token]",
            "9d2a8f6600705a2e006c1b2c00000001f0f0f0a8b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5",
        ),
        p("auth[expires_in]", "3600"),
        p("auth[scope]", "crm"),
        p("auth[domain]", "example.bitrix24.ru"),
        p("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        p("auth[status]", "L"),
        p("auth[client_endpoint]", "https://example.bitrix24.ru/rest/"),
        p("auth[member_id]", "a223c6b3710f85df22e9377d6c4f7553"),
        p(
            "auth[application_token]",
            "51856fefc120afa4b628cc82d3935cce",
        ),
    ]
}

fn deal_update() -> Vec<u8> {
    form_of(&deal_update_pairs())
}

fn body_20k() -> Vec<u8> {
    let mut pairs = deal_update_pairs();
    for i in 0..95 {
        pairs.push((
            format!("data[FIELDS][UF_CRM_{i}]"),
            format!("Заказ {i}: доставка до 5 числа, склад №2"),
        ));
    }
    form_of(&pairs)
}

fn deep(levels: usize) -> Vec<u8> {
    let mut b = b"a".to_vec();
    for _ in 0..levels {
        b.extend_from_slice(b"[a]");
    }
    b.extend_from_slice(b"=1");
    b
}

fn fields_100k() -> Vec<u8> {
    let parts: Vec<String> = (0..100_000).map(|i| format!("f{i}=1")).collect();
    parts.join("&").into_bytes()
}

/// One parse with our decoder, as the receiver does it: `scan` before authentication, then
/// `build`. Returns a one-line description of the outcome.
fn run_ours(body: &[u8], lim: &Limits) -> String {
    let env = match form::scan(body, lim) {
        Ok(env) => env,
        Err(e) => return format!("refused by scan: {e}"),
    };
    match form::build(body, lim) {
        Ok(v) => format!("accepted, event {:?}: {}", env.event, describe(&v)),
        Err(e) => format!("refused by build: {e}"),
    }
}

fn qs_config(depth: usize) -> serde_qs::Config {
    serde_qs::Config::new()
        .max_depth(depth)
        .use_form_encoding(true)
}

fn run_qs(body: &[u8], depth: usize) -> String {
    match qs_config(depth).deserialize_bytes::<Value>(body) {
        Ok(v) => format!("accepted: {}", describe(&v)),
        Err(e) => format!("refused: {}", shorten(&e.to_string(), 90)),
    }
}

/// The value itself when short, else its shape.
fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 90 {
        return s;
    }
    let keys = v.as_object().map_or(0, |m| m.len());
    format!(
        "{} top-level keys, depth {}, {} bytes of JSON",
        keys,
        depth(v),
        s.len()
    )
}

fn depth(v: &Value) -> usize {
    // Iterative: the value may be thousands of levels deep.
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

fn shorten(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn ours_limits(c: &Case) -> Limits {
    c.ours.map_or_else(Limits::default, |f| f())
}

fn qs_depth(c: &Case) -> usize {
    c.qs_depth.unwrap_or(32)
}

/// Peak resident set so far, KiB (`VmHWM`).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: parse once on a 2 MiB-stack thread, print `outcome\tpeak RSS growth KiB`.
fn one(case: &Case, which: &str) -> Result<(), BoxError> {
    let body = (case.body)();
    let lim = ours_limits(case);
    let depth = qs_depth(case);
    let which = which.to_string();
    let before = vm_hwm_kib();
    let outcome = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            catch_unwind(AssertUnwindSafe(|| match which.as_str() {
                "ours" => run_ours(&body, &lim),
                _ => run_qs(&body, depth),
            }))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("PANICKED: {}", shorten(&msg, 80))
            })
        })?
        .join()
        .map_err(|_| "parse thread died")?;
    let grew = vm_hwm_kib().saturating_sub(before);
    println!("{outcome}\t{grew}");
    Ok(())
}

/// What the child reported, or how it died.
struct Outcome {
    text: String,
    rss_kib: Option<u64>,
    survived: bool,
}

fn child(case: &Case, which: &str) -> Result<Outcome, BoxError> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--one", case.name, which])
        .output()?;
    if out.status.success() {
        let line = String::from_utf8_lossy(&out.stdout);
        let (text, rss) = line.trim_end().rsplit_once('\t').unwrap_or((&line, ""));
        return Ok(Outcome {
            text: text.to_string(),
            rss_kib: rss.parse().ok(),
            survived: !text.starts_with("PANICKED"),
        });
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let how = if err.contains("overflowed its stack") {
        "CRASHED: stack overflow (process aborted)".to_string()
    } else {
        format!("CRASHED: {} {}", out.status, shorten(err.trim(), 60))
    };
    Ok(Outcome {
        text: how,
        rss_kib: None,
        survived: false,
    })
}

/// Median time of one parse, and how many were timed.
fn time(f: &dyn Fn()) -> (Duration, usize) {
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_nanos(1));
    let n = (BUDGET.as_nanos() / once.as_nanos()).clamp(11, 2001) as usize;
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[n / 2], n)
}

fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn fmt_rss(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{k} KiB"))
}

struct Row {
    case: &'static str,
    bytes: usize,
    ours: (Outcome, Option<(Duration, usize)>),
    qs: (Outcome, Option<(Duration, usize)>),
}

fn all() -> Result<(), BoxError> {
    let mut rows = Vec::new();
    for c in CASES {
        let body = (c.body)();
        let lim = ours_limits(c);
        let depth = qs_depth(c);
        let o = child(c, "ours")?;
        let q = child(c, "qs")?;
        // Time only what survived in the child; a crash here would end the whole run.
        let ot = o.survived.then(|| {
            time(&|| {
                std::hint::black_box(run_ours(std::hint::black_box(&body), &lim));
            })
        });
        let qt = q.survived.then(|| {
            time(&|| {
                std::hint::black_box(run_qs(std::hint::black_box(&body), depth));
            })
        });
        println!("== {} ({}; {} bytes)", c.name, c.what, body.len());
        for (who, out, t) in [("ours    ", &o, &ot), ("serde_qs", &q, &qt)] {
            let t = t.map_or("-".into(), |(d, n)| format!("{} (n={n})", fmt_dur(d)));
            println!(
                "   {who}  {t:>18}  peak RSS +{:>9}  {}",
                fmt_rss(out.rss_kib),
                out.text
            );
        }
        rows.push(Row {
            case: c.name,
            bytes: body.len(),
            ours: (o, ot),
            qs: (q, qt),
        });
    }
    println!();
    println!(
        "| case | bytes | ours: median | ours: peak RSS + | serde_qs: median | serde_qs: peak RSS + |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let d = |t: &Option<(Duration, usize)>| t.map_or("-".into(), |(d, _)| fmt_dur(d));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.case,
            r.bytes,
            d(&r.ours.1),
            fmt_rss(r.ours.0.rss_kib),
            d(&r.qs.1),
            fmt_rss(r.qs.0.rss_kib)
        );
    }
    println!();
    println!("| case | ours returned | serde_qs returned |");
    println!("|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} |",
            r.case,
            r.ours.0.text.replace('|', "\\|"),
            r.qs.0.text.replace('|', "\\|")
        );
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => all(),
        ["--list"] => {
            for c in CASES {
                println!("{}\t{}", c.name, c.what);
            }
            Ok(())
        }
        ["--one", name, which @ ("ours" | "qs")] => {
            let c = CASES
                .iter()
                .find(|c| c.name == *name)
                .ok_or_else(|| format!("no case {name}"))?;
            one(c, which)
        }
        _ => Err("usage: form_bench [--list | --one CASE ours|qs]".into()),
    }
}
