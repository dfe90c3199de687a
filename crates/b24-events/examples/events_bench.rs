//! Event pipeline benchmark: the real worker loop and the real online receiver, measured.
//!
//! ```text
//! cargo run --release -p b24-events --example events_bench -- worker-sqlite --events 50000 --concurrency 16
//! cargo run --release -p b24-events --example events_bench -- worker-pg --events 20000 --workers 2 --concurrency 16
//! cargo run --release -p b24-events --example events_bench -- receiver --events 10000 --clients 50
//! ```
//!
//! - `worker-sqlite`: a fresh SQLite queue in a temp dir, N offline-shaped events enqueued,
//!   then `b24_events::worker::run` (the loop `b24 worker --once` runs) with a no-op in-process
//!   handler until the queue is drained.
//! - `worker-pg`: the same on PostgreSQL (`B24_TEST_PG_URL`, a fresh schema that is dropped
//!   afterwards), with W worker instances, each with its own store and connection pool.
//! - `receiver`: the online receiver on 127.0.0.1:0 over a SQLite queue; ONAPPINSTALL, then N
//!   form-encoded events from K concurrent HTTP clients; latency percentiles and a check that
//!   exactly those N events (plus the install) are queued.
//!
//! Every run prints its figures as text and one `json: {…}` line. Peak RSS is `VmHWM` from
//! `/proc/self/status` (the whole process: set-up, load generator and all).

// Tests and benches build their own reqwest clients; their set-up installs the TLS provider
// (the workspace clippy.toml forbids that in library code only).
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use b24_events::handler::Handler;
use b24_events::queue::RetryRule;
use b24_events::worker::{self, WorkerConfig, WorkerStats};
use b24_events::{NewEvent, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

const USAGE: &str = "usage: events_bench <mode> [options]
  worker-sqlite --events N --concurrency C
  worker-pg     --events N --workers W --concurrency C   (PostgreSQL URL: B24_TEST_PG_URL)
  receiver      --events N --clients K";

const PORTAL: &str = "bench.bitrix24.com";
const MEMBER: &str = "b3c1e2f4a5d6c7b8a9e0f1d2c3b4a5e6";
const APP_TOKEN: &str = "bench0app0token0f3a9c1d7e5b2";

struct Args {
    mode: String,
    events: usize,
    concurrency: usize,
    workers: usize,
    clients: usize,
}

fn parse_args() -> Res<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or(USAGE)?;
    let mut a = Args {
        mode,
        events: 10_000,
        concurrency: 16,
        workers: 1,
        clients: 50,
    };
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?
            .replace(['_', ','], "")
            .parse()
            .map_err(|x| format!("{flag}: {x}"))?;
        match flag.as_str() {
            "--events" => a.events = value,
            "--concurrency" => a.concurrency = value.max(1),
            "--workers" => a.workers = value.max(1),
            "--clients" => a.clients = value.max(1),
            other => return Err(format!("unknown option {other}\n{USAGE}").into()),
        }
    }
    Ok(a)
}

/// Peak resident set size in MiB (`VmHWM`), if the kernel reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) of this process so far, in seconds: `/proc/self/stat` fields 14
/// and 15, in the kernel's fixed USER_HZ of 100.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields after it are counted from its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A stopwatch for wall and CPU time.
struct Watch {
    wall: Instant,
    cpu: Option<f64>,
}

impl Watch {
    fn start() -> Watch {
        Watch {
            wall: Instant::now(),
            cpu: cpu_secs(),
        }
    }

    /// (wall seconds, CPU seconds of this process if known).
    fn stop(&self) -> (f64, Option<f64>) {
        let cpu = match (self.cpu, cpu_secs()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (self.wall.elapsed().as_secs_f64(), cpu)
    }
}

/// `CPU 1.23 s (24.6 µs/event)`.
fn cpu_text(cpu: Option<f64>, n: usize) -> String {
    match cpu {
        Some(c) => format!("CPU {c:.2} s ({:.1} us/event)", c * 1e6 / n.max(1) as f64),
        None => "CPU n/a".into(),
    }
}

/// The machine, so that figures from a busy host can be told apart.
fn host_line() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "n/a".into());
    println!("host: {cpus} CPUs, load average (1 min) {load} before the run");
}

fn rss_text() -> String {
    peak_rss_mib()
        .map(|m| format!("{m:.1} MiB"))
        .unwrap_or_else(|| "n/a".into())
}

/// Thousands separators for the printed figures.
fn group(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An event as `event.offline.get` returns it, keyed the way the offline puller keys it.
fn offline_event(i: usize) -> NewEvent {
    let row = json!({
        "ID": (1_000_000 + i).to_string(),
        "TIMESTAMP_X": "2026-11-24T12:00:00+03:00",
        "EVENT_NAME": "ONCRMLEADADD",
        "EVENT_DATA": {"FIELDS": {"ID": (i + 1).to_string()}},
        "EVENT_ADDITIONAL": {"user_id": "1"},
        "MESSAGE_ID": format!("{:032x}", 0x5eed_0000_0000_u64 + i as u64),
    });
    NewEvent {
        key: b24_events::pull::offline_key(PORTAL, &row).expect("row has an ID"),
        source: "offline".into(),
        name: "ONCRMLEADADD".into(),
        payload: row,
    }
}

/// Enqueue N events in batches of 1,000; returns the time it took.
async fn fill(store: &Store, n: usize) -> Res<Duration> {
    let t = Instant::now();
    let mut queued = 0;
    for start in (0..n).step_by(1000) {
        let batch: Vec<NewEvent> = (start..(start + 1000).min(n)).map(offline_event).collect();
        queued += store.enqueue(&batch).await?;
    }
    if queued != n {
        return Err(format!("enqueued {queued} of {n} events").into());
    }
    Ok(t.elapsed())
}

/// Run one worker instance per store (the code path of `b24 worker --once --no-pull`) with a
/// no-op handler until the queue is drained; returns the wall time and what each one handled.
async fn drain(stores: &[Arc<Store>], concurrency: usize) -> Res<(f64, Option<f64>, Vec<u64>)> {
    let stop = CancellationToken::new();
    let watch = Watch::start();
    let mut runs = tokio::task::JoinSet::new();
    for (i, store) in stores.iter().enumerate() {
        let stats = Arc::new(WorkerStats::default());
        let cfg = WorkerConfig {
            id: format!("bench-{}-{i}", std::process::id()),
            concurrency,
            lease_secs: 60.0,
            retry: RetryRule::default(),
            pull: None,
            once: true,
            ..WorkerConfig::default()
        };
        let (store, stop) = (store.clone(), stop.clone());
        runs.spawn(async move {
            let noop = Handler::in_process(|_job| async { Ok(()) });
            worker::run(store, noop, cfg, stats.clone(), stop).await?;
            Ok::<_, b24_events::EventsError>((i, stats.handled.load(Relaxed)))
        });
    }
    let mut handled = vec![0; stores.len()];
    while let Some(r) = runs.join_next().await {
        let (i, n) = r??;
        handled[i] = n;
    }
    let (wall, cpu) = watch.stop();
    Ok((wall, cpu, handled))
}

/// The queue must be empty and every event recorded as processed.
async fn check_drained(store: &Store, n: usize) -> Res<String> {
    let s = store.stats().await?;
    let ok = s.processed == n as i64 && s.ready == 0 && s.running == 0 && s.dead == 0;
    let text = format!(
        "processed {} of {n}, ready {}, running {}, dead {}: {}",
        s.processed,
        s.ready,
        s.running,
        s.dead,
        if ok { "OK" } else { "FAILED" }
    );
    if !ok {
        return Err(format!("check failed: {text}").into());
    }
    Ok(text)
}

async fn worker_sqlite(a: &Args) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("queue.db");
    let store = Arc::new(Store::open(path.to_str().ok_or("temp path is not UTF-8")?).await?);
    let fill_time = fill(&store, a.events).await?;
    let (wall, cpu, handled) = drain(std::slice::from_ref(&store), a.concurrency).await?;
    let check = check_drained(&store, a.events).await?;
    let rate = a.events as f64 / wall;
    println!(
        "worker-sqlite: {} events, concurrency {}: {wall:.3} s, {} events/s, {}, peak RSS {}",
        group(a.events as f64),
        a.concurrency,
        group(rate),
        cpu_text(cpu, a.events),
        rss_text()
    );
    println!(
        "  enqueue (batches of 1,000): {:.3} s, {} events/s",
        fill_time.as_secs_f64(),
        group(a.events as f64 / fill_time.as_secs_f64())
    );
    println!("  check: {check}");
    println!(
        "json: {}",
        json!({"mode": "worker-sqlite", "events": a.events, "concurrency": a.concurrency,
               "seconds": wall, "events_per_sec": rate, "cpu_seconds": cpu, "handled": handled,
               "enqueue_seconds": fill_time.as_secs_f64(), "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}

/// Run `sql` on a single connection to `url`.
async fn pg_exec(url: &str, sql: &str) -> Res<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

async fn worker_pg(a: &Args) -> Res<()> {
    let base = std::env::var("B24_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let url = b24_events::postgres::isolated_url(&base, &schema).await?;
    let result = async {
        let setup = Store::open(&url).await?;
        let fill_time = fill(&setup, a.events).await?;
        // W independent instances, as W processes would be: each has its own pool (and its
        // own LISTEN connection).
        let mut stores = Vec::new();
        for _ in 0..a.workers {
            stores.push(Arc::new(Store::open(&url).await?));
        }
        let (wall, cpu, handled) = drain(&stores, a.concurrency).await?;
        let check = check_drained(&setup, a.events).await?;
        Ok::<_, BoxError>((fill_time, wall, cpu, handled, check))
    }
    .await;
    // The schema is dropped whatever happened.
    let dropped = pg_exec(&base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    let (fill_time, wall, cpu, handled, check) = result?;
    dropped?;
    let rate = a.events as f64 / wall;
    println!(
        "worker-pg: {} events, {} worker(s) x concurrency {}: {wall:.3} s, {} events/s, {} (this process; the server's is not counted), peak RSS {}",
        group(a.events as f64),
        a.workers,
        a.concurrency,
        group(rate),
        cpu_text(cpu, a.events),
        rss_text()
    );
    println!(
        "  handled per worker: {}",
        handled
            .iter()
            .map(|n| group(*n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  enqueue (batches of 1,000): {:.3} s, {} events/s",
        fill_time.as_secs_f64(),
        group(a.events as f64 / fill_time.as_secs_f64())
    );
    println!("  check: {check}");
    println!(
        "json: {}",
        json!({"mode": "worker-pg", "events": a.events, "workers": a.workers,
               "concurrency": a.concurrency, "seconds": wall,
               "events_per_sec": rate, "cpu_seconds": cpu, "handled": handled,
               "enqueue_seconds": fill_time.as_secs_f64(), "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}

/// A Bitrix24 online event body: PHP bracket keys, form-encoded.
fn online_form(event: &str, id: usize) -> String {
    let fields: [(&str, String); 17] = [
        ("event", event.into()),
        ("event_handler_id", "17".into()),
        ("data[FIELDS][ID]", id.to_string()),
        ("ts", "1764000000".into()),
        (
            "auth[access_token]",
            "s6p6eclrdaw0b6p2gqgcjtn0u6tnivhf".into(),
        ),
        ("auth[expires]", "1764003600".into()),
        ("auth[expires_in]", "3600".into()),
        ("auth[scope]", "crm,user".into()),
        ("auth[domain]", PORTAL.into()),
        (
            "auth[server_endpoint]",
            "https://oauth.bitrix.info/rest/".into(),
        ),
        ("auth[status]", "L".into()),
        ("auth[client_endpoint]", format!("https://{PORTAL}/rest/")),
        ("auth[member_id]", MEMBER.into()),
        ("auth[user_id]", "1".into()),
        (
            "auth[refresh_token]",
            "m3r1bdjvtzfn1o0ygjrqyvx4zd1c8pst".into(),
        ),
        ("auth[application_token]", APP_TOKEN.into()),
        ("auth[application_version]", "1".into()),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encoding for form bodies (unreserved characters kept).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Res<u16> {
    Ok(client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?
        .status()
        .as_u16())
}

async fn receiver(a: &Args) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("queue.db");
    let path = path.to_str().ok_or("temp path is not UTF-8")?.to_string();
    let app = b24_events::receiver::router(
        Store::open(&path).await?,
        b24_events::receiver::ReceiverConfig {
            max_body: 64 * 1024,
            pinned_token: Some(APP_TOKEN.into()),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/bitrix/events", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // reqwest has no TLS provider of its own in this workspace: ring, before any client.
    b24::tls::install_default_provider();
    let install = post(
        &reqwest::Client::new(),
        &url,
        online_form("ONAPPINSTALL", 0),
    )
    .await?;
    if install != 200 {
        return Err(format!("ONAPPINSTALL answered HTTP {install}").into());
    }

    let next = Arc::new(AtomicUsize::new(0));
    let watch = Watch::start();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let (next, url, n) = (next.clone(), url.clone(), a.events);
        clients.spawn(async move {
            // Each simulated sender has its own client (its own keep-alive connection).
            let client = reqwest::Client::new();
            let mut lat = Vec::new();
            let mut bad = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                let body = online_form("ONCRMLEADADD", i + 1);
                let t = Instant::now();
                let status = post(&client, &url, body).await?;
                lat.push(t.elapsed());
                if status != 200 {
                    bad.push(status);
                }
            }
            Ok::<_, BoxError>((lat, bad))
        });
    }
    let mut lat = Vec::with_capacity(a.events);
    let mut bad = Vec::new();
    while let Some(r) = clients.join_next().await {
        let (l, b) = r??;
        lat.extend(l);
        bad.extend(b);
    }
    let (wall, cpu) = watch.stop();
    server.abort();
    lat.sort();
    let accepted = lat.len() - bad.len();
    let rate = accepted as f64 / wall;

    // Check through a second connection to the same file: N events plus the install event,
    // every key distinct.
    let q = Store::open(&path).await?;
    let s = q.stats().await?;
    let jobs = q.claim("bench-check", a.events as i64 + 10, 60.0).await?;
    let leads = jobs.iter().filter(|j| j.name == "ONCRMLEADADD").count();
    let installs = jobs.iter().filter(|j| j.name == "ONAPPINSTALL").count();
    let mut keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let ok = bad.is_empty()
        && s.ready == a.events as i64 + 1
        && leads == a.events
        && installs == 1
        && keys.len() == jobs.len();
    let (p50, p90, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    );
    println!(
        "receiver: {} events, {} clients: {wall:.3} s, {} accepted/s, latency p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        group(a.events as f64),
        a.clients,
        group(rate),
    );
    println!(
        "  {} (server and the {} in-process clients together), peak RSS {}",
        cpu_text(cpu, a.events),
        a.clients,
        rss_text()
    );
    println!(
        "  answers: {} x 200, {} other{}",
        group(accepted as f64),
        bad.len(),
        if bad.is_empty() {
            String::new()
        } else {
            format!(" (first: HTTP {})", bad[0])
        }
    );
    println!(
        "  check: queue holds {} ready = {} ONCRMLEADADD (expected {}) + {} ONAPPINSTALL, {} distinct keys: {}",
        s.ready,
        group(leads as f64),
        group(a.events as f64),
        installs,
        group(keys.len() as f64),
        if ok { "OK" } else { "FAILED" }
    );
    println!(
        "json: {}",
        json!({"mode": "receiver", "events": a.events, "clients": a.clients,
               "seconds": wall, "accepted_per_sec": rate, "cpu_seconds": cpu,
               "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
               "non_200": bad.len(), "queued_events": leads, "queued_installs": installs,
               "check": ok, "peak_rss_mib": peak_rss_mib()})
    );
    if !ok {
        return Err("receiver check failed".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let run = async {
        let a = parse_args()?;
        host_line();
        match a.mode.as_str() {
            "worker-sqlite" => worker_sqlite(&a).await,
            "worker-pg" => worker_pg(&a).await,
            "receiver" => receiver(&a).await,
            _ => Err(USAGE.into()),
        }
    };
    if let Err(e) = run.await {
        eprintln!("events_bench: {e}");
        std::process::exit(1);
    }
}
