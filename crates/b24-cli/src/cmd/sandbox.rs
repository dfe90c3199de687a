//! `b24 sandbox`: run the local emulated Bitrix24 portal until interrupted.
//!
//! This command only configures and starts `b24_sandbox`; it uses nothing of the client
//! library, so the sandbox stays an independent implementation of the protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 sandbox                                   # standard plan, free port on 127.0.0.1
  b24 sandbox --json --seed-leads 100000 --faults latency=50ms
  b24 sandbox --plan enterprise --listen 127.0.0.1:8080 --tls
  b24 sandbox --seed-leads 100000 --timing realistic  # calls take their modelled time
  b24 sandbox --scopes crm,user --app-scopes crm       # other methods: 403 insufficient_scope

Point b24 at it with the printed webhook URL:
  export B24_WEBHOOK_URL=http://127.0.0.1:PORT/rest/1/CODE/

Control endpoints (loopback, no auth): GET /_sandbox/stats, GET /_sandbox/requests,
POST /_sandbox/expire-tokens, POST /_sandbox/revoke-tokens, POST /_sandbox/faults (body = spec),
POST /_sandbox/reset-stats, POST /_sandbox/advance?secs=N,
POST /_sandbox/install?handler=URL, POST /_sandbox/uninstall?handler=URL (the app's lifecycle)

Many portals (an app installed on each, one process):
  b24 sandbox --portals 1000 --json > portals.ndjson")]
pub struct Args {
    /// Address to listen on (port 0 = pick a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Portal plan: standard (bucket 50, 2/s) or enterprise (250, 5/s).
    #[arg(long, default_value = "standard")]
    pub plan: String,
    /// Seed for tokens, generated data and faults (same seed, same run).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faults, e.g. `latency=50ms,rate503=0.05,rate500=0.01,drop=0.01,expire=0.005,timeout=0.01`.
    #[arg(long, default_value = "")]
    pub faults: String,
    /// Create this many leads at start.
    #[arg(long, default_value_t = 0)]
    pub seed_leads: usize,
    /// Load records from a JSON file (`{"leads":[...],"deals":[...],"contacts":[...],"companies":[...]}`).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Serve HTTPS with a generated certificate (its CA file is in the start info).
    #[arg(long)]
    pub tls: bool,
    /// Print the start info as one JSON object on the first line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Switch off the leaky bucket and the operating-time limit (raw throughput).
    #[arg(long)]
    pub no_limits: bool,
    /// Lifetime of OAuth access tokens in seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl: u64,
    /// Operating-time budget per method per window, seconds.
    #[arg(long, default_value_t = 480.0)]
    pub operating_limit: f64,
    /// The operating-time window, seconds (600 on a portal): a shorter one lets tests and
    /// benchmarks run whole windows in seconds. `operating_reset_at` follows it.
    #[arg(long, default_value_t = 600.0, value_name = "SECS", value_parser = window_secs)]
    pub operating_window: f64,
    /// `instant` answers at once; `realistic` answers each call after its modelled duration
    /// (a counted page of a large table takes seconds, a `start=-1` page 0.097 s).
    #[arg(long, default_value = "instant", value_name = "instant|realistic")]
    pub timing: String,
    /// Scopes of the incoming webhook, comma-separated (default: all). Methods outside them
    /// answer 403 insufficient_scope; `basic` methods are always available.
    #[arg(long, value_name = "SCOPES", value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Scopes of the OAuth application, comma-separated (default: all).
    #[arg(long, value_name = "SCOPES", value_delimiter = ',')]
    pub app_scopes: Option<Vec<String>>,
    /// Host this many portals in one process, one application installed on each: every portal
    /// has its own `127.0.0.1:PORT` domain, member id, tokens, bucket, offline queue and data.
    /// `--json` then prints one line per portal.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub portals: u32,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let plan = args
        .plan
        .parse()
        .map_err(|e: String| Exit::new(exit::USAGE, e))?;
    let faults = args
        .faults
        .parse()
        .map_err(|e: String| Exit::new(exit::USAGE, format!("--faults: {e}")))?;
    let timing = args
        .timing
        .parse()
        .map_err(|e: String| Exit::new(exit::USAGE, format!("--timing: {e}")))?;
    let scopes = |v: Option<Vec<String>>| {
        v.map(|v| {
            v.into_iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
    };
    let cfg = b24_sandbox::SandboxConfig {
        listen: args.listen,
        plan,
        seed: args.seed,
        faults,
        seed_leads: args.seed_leads,
        tls: args.tls,
        limits: !args.no_limits,
        access_token_ttl: Duration::from_secs(args.token_ttl),
        data_file: args.data,
        operating_limit_secs: args.operating_limit,
        operating_window_secs: args.operating_window,
        timing,
        webhook_scopes: scopes(args.scopes),
        app_scopes: scopes(args.app_scopes),
        ..Default::default()
    };
    if args.portals > 1 {
        return run_many(cfg, args.portals as usize, args.json, g).await;
    }
    let sb = b24_sandbox::start(cfg)
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let info = sb.info().clone();
    if args.json {
        crate::outln!("{}", serde_json::to_string(&info)?)?;
    } else {
        crate::outln!("b24 sandbox portal listening on {}", info.base_url)?;
        crate::outln!("  plan:             {:?}", info.plan)?;
        crate::outln!("  webhook URL:      {}", info.webhook_url)?;
        crate::outln!("  OAuth client id:  {}", info.client_id)?;
        crate::outln!("  OAuth secret:     {}", info.client_secret)?;
        crate::outln!("  access token:     {}", info.access_token)?;
        crate::outln!("  refresh token:    {}", info.refresh_token)?;
        crate::outln!("  token endpoint:   {}", info.oauth_token_url)?;
        crate::outln!("  member id:        {}", info.member_id)?;
        crate::outln!("  app token:        {}", info.application_token)?;
        if let Some(ca) = &info.ca_file {
            crate::outln!("  CA certificate:   {}", ca.display())?;
        }
        crate::outln!()?;
        crate::outln!(
            "Try:  B24_WEBHOOK_URL={} b24 call user.current",
            info.webhook_url
        )?;
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    if !g.quiet {
        crate::errln!("b24 sandbox: running; Ctrl-C to stop");
    }
    let stop = sb.shutdown_token();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        _ = stop.cancelled() => {}
    }
    sb.shutdown().await;
    Ok(exit::OK)
}

/// `--portals N`: N portals in this process until interrupted.
async fn run_many(
    cfg: b24_sandbox::SandboxConfig,
    n: usize,
    json: bool,
    g: &Globals,
) -> anyhow::Result<i32> {
    let portals = b24_sandbox::start_many(cfg, n)
        .await
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    if json {
        for info in portals.infos() {
            crate::outln!("{}", serde_json::to_string(&info)?)?;
        }
    } else if let Some(first) = portals.get(0) {
        let i = first.info();
        crate::outln!("b24 sandbox: {n} portals, one application installed on each")?;
        crate::outln!("  OAuth client id:  {}", i.client_id)?;
        crate::outln!("  OAuth secret:     {}", i.client_secret)?;
        crate::outln!("  #     domain                 member id")?;
        for (k, p) in portals.iter().enumerate() {
            crate::outln!("  {k:<5} {:<22} {}", p.info().domain, p.info().member_id)?;
        }
        crate::outln!()?;
        crate::outln!(
            "Install the app on portal K:  curl -X POST 'http://DOMAIN/_sandbox/install?handler=URL'"
        )?;
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    if !g.quiet {
        crate::errln!("b24 sandbox: {n} portals running; Ctrl-C to stop");
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    portals.shutdown().await;
    Ok(exit::OK)
}

/// A window of at least a second and at most a day.
fn window_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (1.0..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err("the window must be between 1 and 86400 seconds".into())
    }
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}
