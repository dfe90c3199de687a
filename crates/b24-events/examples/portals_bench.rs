//! Many portals: one app installed on N sandbox portals (one process), the real receiver
//! (install verification, ONOFFLINEEVENT wake-ups) and W worker instances on PostgreSQL, each
//! with its own stores, fleet puller and worker loop, as W processes would have. See
//! bench/portals/README.md.
//!
//! Args: --portals 1000 --active 300 --flood 20000 --workers 4 --concurrency 16
//!       --rate 50 (events/s spread over the active portals while the flood drains)
//!       --cap 200 (per-portal admission cap, also the `event.offline.get` limit)
//!       --idle-warmup 120 --idle-secs 120 (the idle portals' polling, measured once the
//!       back-off has reached its 60 s ceiling)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b24_events::fleet::{FleetConfig, FleetStats};
use b24_events::handler::Handler;
use b24_events::installs::Installations;
use b24_events::listen::ServeLimits;
use b24_events::receiver::{ReceiverConfig, ReceiverOptions};
use b24_events::trust::TrustConfig;
use b24_events::worker::{WorkerConfig, WorkerStats};
use b24_events::{Job, Store};
use b24_sandbox::SandboxConfig;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    portals: usize,
    active: usize,
    flood: usize,
    workers: usize,
    concurrency: usize,
    rate: f64,
    idle_secs: f64,
    idle_warmup: f64,
    cap: i64,
}

fn args() -> Args {
    let v: Vec<String> = std::env::args().collect();
    let get = |k: &str, d: f64| {
        v.iter()
            .position(|a| a == k)
            .and_then(|i| v.get(i + 1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(d)
    };
    Args {
        portals: get("--portals", 1000.0) as usize,
        active: get("--active", 300.0) as usize,
        flood: get("--flood", 20000.0) as usize,
        workers: get("--workers", 4.0) as usize,
        concurrency: get("--concurrency", 16.0) as usize,
        rate: get("--rate", 50.0),
        idle_secs: get("--idle-secs", 120.0),
        idle_warmup: get("--idle-warmup", 120.0),
        cap: get("--cap", 200.0) as i64,
    }
}

/// When each (member, lead id) was created, and what the handlers saw.
#[derive(Default)]
struct Clock {
    emitted: Mutex<HashMap<(String, u64), Instant>>,
    quiet_latency_ms: Mutex<Vec<f64>>,
    handled: AtomicU64,
    flood_handled: AtomicU64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Res<()> {
    let a = args();
    let base = std::env::var("B24_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("portals_bench_{}", std::process::id());
    let url = b24_events::postgres::isolated_url(&base, &schema).await?;
    println!(
        "# portals {}, active {}, flood {}, workers {} x concurrency {}, rate {}/s; nproc {}",
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
        "sandbox: {} portals up in {:.1}s",
        ps.len(),
        t0.elapsed().as_secs_f64()
    );

    // The receiver (in this process, on PostgreSQL).
    let app = b24_events::receiver::open(
        &url,
        ReceiverConfig {
            max_body: 256 * 1024,
            pinned_token: None,
        },
        ReceiverOptions {
            trust: TrustConfig {
                portals: vec!["127.0.0.1:*".parse()?],
                loopback_http: true,
                max_concurrent_verifications: 32,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rx = format!("http://{}/", l.local_addr()?);
    let stop_rx = CancellationToken::new();
    tokio::spawn(b24_events::listen::serve(
        l,
        app,
        ServeLimits::default(),
        stop_rx.clone(),
    ));

    // Install the app everywhere; bind offline events (+ ONOFFLINEEVENT) on the active ones.
    let t1 = Instant::now();
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
        "installs: {installed} of {} verified and recorded in {:.1}s",
        a.portals,
        t1.elapsed().as_secs_f64()
    );
    let setup = Store::open(&url).await?;
    // The install events are not part of the measurement.
    loop {
        let jobs = setup.claim("setup", 500, 60.0).await?;
        if jobs.is_empty() {
            break;
        }
        setup.complete_many(&jobs, "setup").await?;
    }
    for p in ps.iter() {
        p.reset_stats();
    }

    // W workers: each its own stores, fleet and worker loop.
    let clock = Arc::new(Clock::default());
    let stop = CancellationToken::new();
    let infos: Arc<HashMap<String, b24_sandbox::StartInfo>> = Arc::new(
        ps.infos()
            .into_iter()
            .map(|i| (i.member_id.clone(), i))
            .collect(),
    );
    let flooded = ps.get(0).ok_or("no portals")?.info().member_id.clone();
    let mut fleets = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..a.workers {
        let store = Arc::new(Store::open(&url).await?);
        let reg = Installations::open(&url).await?;
        let fstats = Arc::new(FleetStats::default());
        fleets.push(fstats.clone());
        let infos = infos.clone();
        let reg2 = reg.clone();
        let pg_url0 = url.clone();
        let factory: b24_events::fleet::ClientFactory = Arc::new(move |inst| {
            let (reg, infos, pg_url) = (reg2.clone(), infos.clone(), pg_url0.clone());
            Box::pin(async move {
                let i = infos
                    .get(&inst.member_id)
                    .ok_or_else(|| b24_events::EventsError::Config("unknown".into()))?;
                let store = Arc::new(reg.token_store(&inst.member_id));
                use b24::auth::TokenStore;
                let pair = store
                    .load()
                    .await?
                    .ok_or_else(|| b24_events::EventsError::Config("no tokens".into()))?;
                // The app's settings, with the bucket in PostgreSQL: every worker shares
                // each portal's bucket, as hosts on one B24_STORE_URL do.
                let _ = pair;
                let vars: HashMap<&str, String> = HashMap::from([
                    ("B24_AUTH_MODE", "oauth".to_string()),
                    ("B24_DOMAIN", i.base_url.clone()),
                    ("B24_CLIENT_ID", i.client_id.clone()),
                    ("B24_CLIENT_SECRET", i.client_secret.clone()),
                    ("B24_OAUTH_TOKEN_URL", i.oauth_token_url.clone()),
                    ("B24_STORE_URL", pg_url.clone()),
                    ("B24_RATE_LIMITER", "postgres".to_string()),
                ]);
                let cfg = b24::Config::from_lookup(
                    &|k| vars.get(k).cloned(),
                    std::env::temp_dir().join("b24-portals-bench"),
                )?;
                Ok(b24::Client::with_token_store(cfg, Some(store)).await?)
            })
        });
        let fcfg = FleetConfig {
            // Pull rounds hold a pooled connection (the pull lock): stay under the pool of 8.
            concurrency: 4,
            per_portal_cap: a.cap,
            batch: a.cap.clamp(1, 1000) as u32,
            poll_min: Duration::from_millis(200),
            poll_max: Duration::from_secs(60),
            rescan: Duration::from_millis(200),
        };
        tasks.spawn(b24_events::fleet::run(
            reg,
            store.clone(),
            fcfg,
            factory,
            fstats,
            stop.clone(),
        ));
        let (clock2, flooded2) = (clock.clone(), flooded.clone());
        let handler = Handler::in_process(move |job: &Job| {
            let (clock, flooded) = (clock2.clone(), flooded2.clone());
            let member = job.payload["auth"]["member_id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let id: u64 = job.payload["EVENT_DATA"]["FIELDS"]["ID"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let name = job.name.clone();
            async move {
                if name != "ONCRMLEADADD" {
                    return Ok(());
                }
                clock.handled.fetch_add(1, Relaxed);
                if member == flooded {
                    clock.flood_handled.fetch_add(1, Relaxed);
                } else if let Some(t) = clock
                    .emitted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(member, id))
                {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    clock
                        .quiet_latency_ms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ms);
                }
                Ok(())
            }
        });
        let wcfg = WorkerConfig {
            id: format!("bench-{w}"),
            concurrency: a.concurrency,
            ..WorkerConfig::default()
        };
        tasks.spawn(b24_events::worker::run(
            store,
            handler,
            wcfg,
            Arc::new(WorkerStats::default()),
            stop.clone(),
        ));
    }

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
    let limit = Duration::from_secs(600);
    while (clock.flood_handled.load(Relaxed) as usize) < a.flood && start.elapsed() < limit {
        for _ in 0..per_tick {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = 1 + (rng >> 33) as usize % (a.active.max(2) - 1);
            let Some(p) = ps.get(k) else { continue };
            let m = p.info().member_id.clone();
            let id = next_id.entry(m.clone()).or_default();
            *id += 1;
            clock
                .emitted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((m, *id), Instant::now());
            p.emit_lead_adds(1);
            quiet_sent += 1;
        }
        tokio::time::sleep(tick).await;
    }
    let flood_secs = start.elapsed().as_secs_f64();
    // Let the last quiet events arrive.
    let wait = Instant::now();
    while clock.handled.load(Relaxed) < a.flood as u64 + quiet_sent
        && wait.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy_secs = start.elapsed().as_secs_f64();
    let handled = clock.handled.load(Relaxed);

    // Idle portals: only the fleet's back-off polls reach them. Measured once the back-off
    // has grown to its ceiling (steady state), after `--idle-warmup` seconds.
    let idle: Vec<_> = ps.iter().skip(a.active).collect();
    tokio::time::sleep(Duration::from_secs_f64(a.idle_warmup)).await;
    for p in &idle {
        p.reset_stats();
    }
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let idle_requests: u64 = idle.iter().map(|p| p.stats().requests).sum();
    stop.cancel();
    stop_rx.cancel();
    while tasks.join_next().await.is_some() {}

    let count_503: u64 = ps.iter().map(|p| p.stats().count_503).sum();
    let mut lat = clock
        .quiet_latency_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let locked: u64 = fleets
        .iter()
        .flat_map(|f| ps.iter().filter_map(|p| f.portal(&p.info().member_id)))
        .map(|c| c.locked_elsewhere)
        .sum();
    let summary = json!({
        "portals": a.portals, "active": a.active, "flood": a.flood, "workers": a.workers,
        "handled": handled, "expected": a.flood as u64 + quiet_sent,
        "flood_drained_secs": (flood_secs * 10.0).round() / 10.0,
        "events_per_sec": ((handled as f64 / busy_secs) * 10.0).round() / 10.0,
        "quiet_events": lat.len(),
        "quiet_p50_ms": (pct(&mut lat, 0.50) * 10.0).round() / 10.0,
        "quiet_p99_ms": (pct(&mut lat, 0.99) * 10.0).round() / 10.0,
        "quiet_max_ms": (pct(&mut lat, 1.0) * 10.0).round() / 10.0,
        "count_503": count_503,
        "idle_portals": idle.len(),
        "idle_requests_per_portal_per_min": if idle.is_empty() { 0.0 } else {
            ((idle_requests as f64 / idle.len() as f64 / (a.idle_secs / 60.0)) * 1000.0).round() / 1000.0
        },
        "pull_rounds_locked_by_another_worker": locked,
    });
    println!("{summary}");
    if let Ok(drop) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
        let (c, conn) = drop;
        let h = tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
        drop_client(c);
        let _ = h.await;
    }
    Ok(())
}

fn drop_client(c: tokio_postgres::Client) {
    drop(c);
}
