//! Many portals, many processes: one app installed on N sandbox portals hosted by this
//! process, the real receiver (`b24 events serve`) verifying every install, and W separate
//! `b24 worker --all-portals` processes on one PostgreSQL store forwarding every event to a
//! handler endpoint in this process, which records each event's effect once and the time
//! from the event's creation on its portal to the handler. See bench/portals/README.md.
//!
//! Args: --b24 PATH (the `b24` binary; or B24_BIN)
//!       --portals 1000 --active 300 --flood 20000 --workers 4 --concurrency 16
//!       --rate 50 (events/s spread over the active portals while the flood drains)
//!       --cap 200 (per-portal admission cap) --pull-concurrency 8
//!       --idle-warmup 120 --idle-secs 120 (the idle portals' polling, measured once the
//!       back-off has reached its --poll-max 60 s ceiling)
//!       --out DIR (the children's state dirs and logs go to DIR/run-PID; default
//!       bench/portals/out)

// Tests and benches build their own reqwest clients; their set-up installs the TLS provider
// (the workspace clippy.toml forbids that in library code only).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24_events::Store;
use b24_sandbox::SandboxConfig;
use futures::StreamExt;
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    b24: PathBuf,
    out: PathBuf,
    portals: usize,
    active: usize,
    flood: usize,
    workers: usize,
    concurrency: usize,
    pull_concurrency: usize,
    rate: f64,
    idle_secs: f64,
    idle_warmup: f64,
    poll_max: f64,
    cap: i64,
}

fn args() -> Res<Args> {
    let v: Vec<String> = std::env::args().collect();
    // The last occurrence wins: run.sh puts its defaults first and the caller's after them.
    let raw = |k: &str| {
        v.iter()
            .rposition(|a| a == k)
            .and_then(|i| v.get(i + 1))
            .cloned()
    };
    let get = |k: &str, d: f64| raw(k).and_then(|x| x.parse().ok()).unwrap_or(d);
    let b24 = raw("--b24")
        .or_else(|| std::env::var("B24_BIN").ok())
        .ok_or("--b24 PATH (or B24_BIN): the b24 binary the workers run")?;
    Ok(Args {
        b24: PathBuf::from(b24),
        out: PathBuf::from(raw("--out").unwrap_or_else(|| "bench/portals/out".into())),
        portals: get("--portals", 1000.0) as usize,
        active: get("--active", 300.0) as usize,
        flood: get("--flood", 20000.0) as usize,
        workers: get("--workers", 4.0) as usize,
        concurrency: get("--concurrency", 16.0) as usize,
        pull_concurrency: get("--pull-concurrency", 8.0) as usize,
        rate: get("--rate", 50.0),
        idle_secs: get("--idle-secs", 120.0),
        idle_warmup: get("--idle-warmup", 120.0),
        poll_max: get("--poll-max", 60.0),
        cap: get("--cap", 200.0) as i64,
    })
}

/// What the handler endpoint saw: every delivery, each event's effect once.
#[derive(Default)]
struct Sink {
    /// Creation time of each (member id, lead id) the load emitted on a non-flooded portal.
    emitted: Mutex<HashMap<(String, u64), Instant>>,
    /// Deliveries per event key: the effect is applied on the first only.
    effects: Mutex<HashMap<String, u32>>,
    quiet_latency_ms: Mutex<Vec<f64>>,
    flooded: Mutex<String>,
    handled: AtomicU64,
    flood_handled: AtomicU64,
    duplicates: AtomicU64,
    per_worker: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    /// One forwarded event (`{"key","event","attempt","payload"}`) from worker `w`.
    fn deliver(&self, w: &str, body: &Value) {
        if body["event"] != "ONCRMLEADADD" {
            return;
        }
        let Some(key) = body["key"].as_str() else {
            return;
        };
        *lock(&self.per_worker).entry(w.to_string()).or_default() += 1;
        {
            let mut eff = lock(&self.effects);
            let n = eff.entry(key.to_string()).or_default();
            *n += 1;
            if *n > 1 {
                self.duplicates.fetch_add(1, Relaxed);
                return;
            }
        }
        self.handled.fetch_add(1, Relaxed);
        let p = &body["payload"];
        let member = p["auth"]["member_id"].as_str().unwrap_or("").to_string();
        let id: u64 = p["EVENT_DATA"]["FIELDS"]["ID"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| p["EVENT_DATA"]["FIELDS"]["ID"].as_u64())
            .unwrap_or(0);
        if member == *lock(&self.flooded) {
            self.flood_handled.fetch_add(1, Relaxed);
        } else if let Some(t) = lock(&self.emitted).get(&(member, id)) {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            lock(&self.quiet_latency_ms).push(ms);
        }
    }
}

/// The handler endpoint: `POST /w/K` with the event JSON; 200 = done.
async fn serve_sink(sink: Arc<Sink>) -> Res<String> {
    use axum::extract::{Path as UrlPath, State};
    let app = axum::Router::new()
        .route(
            "/w/{k}",
            axum::routing::post(
                |State(s): State<Arc<Sink>>, UrlPath(k): UrlPath<String>, body: String| async move {
                    match serde_json::from_str::<Value>(&body) {
                        Ok(v) => {
                            s.deliver(&k, &v);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                },
            ),
        )
        .with_state(sink);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(url)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(r1(kb / 1024.0))
}

/// A `b24` child with the app's settings, the shared store and its own state dir; no `B24_*`
/// variable of the caller's leaks in.
fn b24(a: &Args, app: &[(&str, String)], name: &str, argv: &[&str]) -> Res<Child> {
    let dir = a.out.join(name);
    std::fs::create_dir_all(dir.join("state"))?;
    std::fs::create_dir_all(dir.join("config"))?;
    let mut c = Command::new(&a.b24);
    for (k, _) in std::env::vars() {
        if k.starts_with("B24_") {
            c.env_remove(k);
        }
    }
    c.envs(app.iter().map(|(k, v)| (*k, v.as_str())))
        .env("B24_STATE_DIR", dir.join("state"))
        .env("B24_CONFIG_DIR", dir.join("config"))
        .env("HOME", &dir)
        .args(argv)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?);
    if name == "receiver" {
        c.stdout(Stdio::piped());
    } else {
        c.stdout(std::fs::File::create(dir.join("stdout.log"))?);
    }
    Ok(c.spawn()?)
}

fn stop(children: &mut [Child]) {
    for c in children.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let t = Instant::now();
    for c in children.iter_mut() {
        while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut a = args()?;
    // The children's state dirs and logs: fresh for each run.
    a.out = a.out.join(format!("run-{}", std::process::id()));
    let base = std::env::var("B24_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("portals_bench_{}", std::process::id());
    let url = b24_events::postgres::isolated_url(&base, &schema).await?;
    std::fs::create_dir_all(&a.out)?;
    println!(
        "# portals {}, active {}, flood {}, {} worker processes x concurrency {}, rate {}/s; nproc {}",
        a.portals,
        a.active,
        a.flood,
        a.workers,
        a.concurrency,
        a.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t0 = Instant::now();
    let ps = Arc::new(b24_sandbox::start_many(SandboxConfig::default(), a.portals).await?);
    println!(
        "sandbox: {} portals up in {:.1}s (pid {})",
        ps.len(),
        t0.elapsed().as_secs_f64(),
        std::process::id()
    );
    let i0 = ps.get(0).ok_or("no portals")?.info().clone();
    let app: Vec<(&str, String)> = vec![
        ("B24_CLIENT_ID", i0.client_id.clone()),
        ("B24_CLIENT_SECRET", i0.client_secret.clone()),
        ("B24_OAUTH_TOKEN_URL", i0.oauth_token_url.clone()),
        ("B24_STORE_URL", url.clone()),
        ("B24_RATE_LIMITER", "postgres".into()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ];

    // The receiver, a process of its own on the shared store.
    let mut rx_child = b24(
        &a,
        &app,
        "receiver",
        &[
            "events",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-portal",
            "127.0.0.1:*",
        ],
    )?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = rx_child.stdout.take().ok_or("receiver stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let rx = serde_json::from_str::<Value>(&line)?["listening"]
        .as_str()
        .ok_or("the receiver did not say where it listens (see out/receiver/stderr.log)")?
        .to_string();

    // Install the app everywhere; bind offline events (+ ONOFFLINEEVENT) on the active ones.
    let t1 = Instant::now();
    // reqwest has no TLS provider of its own in this workspace: ring, before any client.
    b24::tls::install_default_provider();
    let http = reqwest::Client::new();
    let results: Vec<u16> = futures::stream::iter(0..a.portals)
        .map(|k| {
            let (ps, rx, http) = (ps.clone(), rx.clone(), http.clone());
            let active = k < a.active;
            async move {
                let Some(p) = ps.get(k) else { return 0 };
                let s = p.install_app(&rx).await.status;
                if active {
                    for body in [
                        json!({"event": "ONCRMLEADADD", "event_type": "offline"}),
                        json!({"event": "ONOFFLINEEVENT", "handler": rx, "options": {"minTimeout": 1}}),
                    ] {
                        let mut b = body;
                        b["auth"] = json!(p.info().access_token);
                        let _ = http
                            .post(format!("{}/rest/event.bind", p.base_url()))
                            .json(&b)
                            .send()
                            .await;
                    }
                }
                s
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let installed = results.iter().filter(|s| **s == 200).count();
    println!(
        "installs: {installed} of {} verified by the receiver and recorded in {:.1}s",
        a.portals,
        t1.elapsed().as_secs_f64()
    );
    // The install events are not part of the measurement.
    let setup = Store::open(&url).await?;
    loop {
        let jobs = setup.claim("setup", 500, 60.0).await?;
        if jobs.is_empty() {
            break;
        }
        setup.complete_many(&jobs, "setup").await?;
    }
    drop(setup);
    for p in ps.iter() {
        p.reset_stats();
    }

    // The handler endpoint, and W worker processes forwarding to it.
    let sink = Arc::new(Sink::default());
    let flooded = i0.member_id.clone();
    *lock(&sink.flooded) = flooded.clone();
    let sink_url = serve_sink(sink.clone()).await?;
    let (conc, cap, pc, pmax) = (
        a.concurrency.to_string(),
        a.cap.to_string(),
        a.pull_concurrency.to_string(),
        a.poll_max.to_string(),
    );
    let mut workers = Vec::new();
    for w in 0..a.workers {
        let fwd = format!("{sink_url}/w/{w}");
        workers.push(b24(
            &a,
            &app,
            &format!("worker-{w}"),
            &[
                "worker",
                "--all-portals",
                "--forward",
                &fwd,
                "--concurrency",
                &conc,
                "--per-portal-cap",
                &cap,
                "--pull-concurrency",
                &pc,
                "--poll-interval",
                "0.2",
                "--poll-max",
                &pmax,
                "--handler-timeout",
                "30",
            ],
        )?);
    }
    let pids: Vec<u32> = workers.iter().map(|c| c.id()).collect();
    println!("workers: {} processes, pids {pids:?}", workers.len());

    // The flood, then steady events on the other active portals until it has drained.
    let mut next_id: HashMap<String, u64> = HashMap::new();
    let start = Instant::now();
    let p0 = ps.get(0).ok_or("no portals")?;
    p0.emit_lead_adds(a.flood);
    next_id.insert(flooded.clone(), a.flood as u64);
    let mut quiet_sent = 0u64;
    let mut rng: u64 = 0x5eed;
    let tick = Duration::from_millis(100);
    let per_tick = (a.rate * tick.as_secs_f64()).max(1.0) as usize;
    let limit = Duration::from_secs(900);
    while (sink.flood_handled.load(Relaxed) as usize) < a.flood && start.elapsed() < limit {
        for _ in 0..per_tick {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = 1 + (rng >> 33) as usize % (a.active.max(2) - 1);
            let Some(p) = ps.get(k) else { continue };
            let m = p.info().member_id.clone();
            let id = next_id.entry(m.clone()).or_default();
            *id += 1;
            lock(&sink.emitted).insert((m, *id), Instant::now());
            p.emit_lead_adds(1);
            quiet_sent += 1;
        }
        tokio::time::sleep(tick).await;
    }
    let flood_secs = start.elapsed().as_secs_f64();
    let expected = a.flood as u64 + quiet_sent;
    // Let the last quiet events arrive.
    let wait = Instant::now();
    while sink.handled.load(Relaxed) < expected && wait.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy_secs = start.elapsed().as_secs_f64();
    let handled = sink.handled.load(Relaxed);
    let count_503_busy: u64 = ps.iter().map(|p| p.stats().count_503).sum();
    println!(
        "load: {expected} events ({} flood + {quiet_sent} quiet); flood drained in {flood_secs:.1}s, all handled after {busy_secs:.1}s",
        a.flood
    );

    // Idle portals: only the workers' back-off polls reach them. Measured once the back-off
    // has grown to its ceiling (steady state), after `--idle-warmup` seconds.
    let idle: Vec<_> = ps.iter().skip(a.active).collect();
    tokio::time::sleep(Duration::from_secs_f64(a.idle_warmup)).await;
    for p in &idle {
        p.reset_stats();
    }
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let idle_requests: u64 = idle.iter().map(|p| p.stats().requests).sum();
    let rss: Vec<Option<f64>> = pids.iter().map(|p| peak_rss_mib(*p)).collect();
    let rx_rss = peak_rss_mib(rx_child.id());
    stop(&mut workers);
    stop(std::slice::from_mut(&mut rx_child));

    let stats: Vec<_> = ps.iter().map(|p| p.stats()).collect();
    let with_503: Vec<Value> = ps
        .iter()
        .zip(&stats)
        .filter(|(_, s)| s.count_503 > 0)
        .map(|(p, s)| json!({"domain": p.info().domain, "count_503": s.count_503}))
        .collect();
    let count_503: u64 = stats.iter().map(|s| s.count_503).sum();
    let left_on_portals: u64 = stats.iter().map(|s| s.offline_queue_depth).sum();
    let mut lat = lock(&sink.quiet_latency_ms).clone();
    let effects = lock(&sink.effects).len();
    let summary = json!({
        "portals": a.portals, "active": a.active, "flood": a.flood,
        "worker_processes": a.workers,
        "expected": expected, "handled": handled, "effects": effects,
        "duplicate_deliveries": sink.duplicates.load(Relaxed),
        "events_left_on_portals": left_on_portals,
        "flood_drained_secs": r1(flood_secs),
        "events_per_sec": r1(handled as f64 / busy_secs),
        "quiet_events": lat.len(),
        "quiet_p50_ms": r1(pct(&mut lat, 0.50)),
        "quiet_p99_ms": r1(pct(&mut lat, 0.99)),
        "quiet_max_ms": r1(pct(&mut lat, 1.0)),
        "count_503_total": count_503,
        "count_503_during_load": count_503_busy,
        "portals_with_503": with_503,
        "idle_portals": idle.len(),
        "idle_requests_per_portal_per_min": if idle.is_empty() { 0.0 } else {
            ((idle_requests as f64 / idle.len() as f64 / (a.idle_secs / 60.0)) * 1000.0).round() / 1000.0
        },
        "events_per_worker": *lock(&sink.per_worker),
        "worker_peak_rss_mib": rss,
        "receiver_peak_rss_mib": rx_rss,
    });
    println!("{summary}");
    drop_schema(&base, &schema).await;
    Ok(())
}

async fn drop_schema(base: &str, schema: &str) {
    if let Ok((c, conn)) = tokio_postgres::connect(base, tokio_postgres::NoTls).await {
        let h = tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
        drop(c);
        let _ = h.await;
    }
}
