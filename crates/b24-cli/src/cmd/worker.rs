//! `b24 worker`: pull offline events and run a handler for every queued event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use b24_events::handler::Handler;
use b24_events::queue::RetryRule;
use b24_events::worker::{WorkerConfig, WorkerStats};

use crate::cmd::events::{open_store, shutdown_token};
use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 worker --exec ./handle-deal.sh --once          # drain and exit
  b24 worker --forward https://internal/b24 --concurrency 8 --metrics-listen 127.0.0.1:9464
  B24_STORE_URL=postgres://b24@db/b24 b24 worker --exec ./h.sh --no-pull

The handler gets the event JSON on stdin and B24_EVENT_KEY, B24_EVENT_NAME, B24_EVENT_ID in its
environment; exit 0 = done. It does not get the worker's credentials: every other B24_* variable,
any variable whose name looks secret (…TOKEN, …SECRET, …PASSWORD, …_KEY, AUTH…, …DSN, …) and
any whose value is a URL with a password are left out of its environment. Pass one back by
name with --handler-env NAME (repeatable), e.g. --handler-env GITHUB_TOKEN (never a B24_* one).
It runs in its own process group: on timeout the whole group is killed. Its lease is renewed
while it runs. A worker killed at any moment loses nothing: leases expire and events are
handled again, so make the handler's effect idempotent with B24_EVENT_KEY.

Offline polling adapts: every empty answer doubles the wait from --poll-interval up to
--poll-max (default 30 s: 1.7% of the standard plan's request budget); events bring it back.
With `b24 events serve` on the same store and ONOFFLINEEVENT bound to it, the portal's
notification wakes the worker at once (for a portal installed through the receiver, the
worker reads it from the installation every 250 ms).
--once exits 1 when any handler run failed or an event was dead-lettered.")]
pub struct Args {
    /// Run this shell command per event (event JSON on stdin).
    #[arg(long, conflicts_with = "forward")]
    pub exec: Option<String>,
    /// POST each event as JSON to this URL (2xx = done).
    #[arg(long)]
    pub forward: Option<String>,
    /// Pass this variable of the worker's environment to the --exec handler, which otherwise
    /// does not get b24's variables or any that look like a credential (repeatable; one name
    /// each, no patterns).
    #[arg(long = "handler-env", value_name = "NAME", requires = "exec")]
    pub handler_env: Vec<String>,
    /// Drain the portal's offline queue and the local queue, then exit.
    #[arg(long)]
    pub once: bool,
    /// Handlers running at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Lease per job, seconds (an unfinished job is retried after it).
    #[arg(long, default_value_t = 60.0)]
    pub lease: f64,
    /// Attempts before an event goes to the dead letters.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: i32,
    /// First retry delay, seconds (doubles each attempt).
    #[arg(long, default_value_t = 2.0)]
    pub retry_base: f64,
    /// Handler timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub handler_timeout: f64,
    /// Do not pull offline events from the portal (queue only; for extra workers).
    #[arg(long)]
    pub no_pull: bool,
    /// Queue store: a SQLite path (default: queue.db in the state dir) or postgres://…
    /// (connections per process, all stores together: B24_PG_POOL_SIZE, default 16)
    #[arg(long, env = "B24_STORE_URL")]
    pub store: Option<String>,
    /// Shortest wait between offline pulls, seconds (while events keep coming).
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Longest wait between offline pulls of an idle worker, seconds (the wait doubles up to
    /// it after each empty answer).
    #[arg(long, default_value_t = 30.0)]
    pub poll_max: f64,
    /// Forget processed event keys after this many days (0 = keep for ever). A delivery that
    /// comes back after its key was forgotten is handled again.
    #[arg(long, default_value_t = 14.0)]
    pub processed_retention_days: f64,
    /// Pull every portal the app is installed on (`b24 portals list`), each with its own
    /// tokens and bucket, woken by its ONOFFLINEEVENT; hosts sharing PostgreSQL never pull one
    /// portal at once.
    #[arg(long, conflicts_with = "no_pull")]
    pub all_portals: bool,
    /// With --all-portals: most events of one portal queued or running before it is pulled
    /// again (a flooded portal keeps the rest on the portal and cannot starve the others).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub per_portal_cap: i64,
    /// Most handlers running at once for one portal (the event's member id), counted over
    /// every worker on the store; portals also take turns at each claim, so a flooded portal
    /// cannot starve the others. Default: 4 with --all-portals, no limit otherwise.
    #[arg(long, value_name = "N")]
    pub per_portal_concurrency: Option<usize>,
    /// With --all-portals: portals pulled at once by this process.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub pull_concurrency: usize,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let timeout = Duration::from_secs_f64(args.handler_timeout.max(0.1));
    let finite = |v: f64, flag: &str| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(Exit::new(
                exit::USAGE,
                format!("{flag} must be a number of seconds ≥ 0"),
            ))
        }
    };
    let poll_interval =
        Duration::from_secs_f64(finite(args.poll_interval, "--poll-interval")?.max(0.1));
    let poll_max = Duration::from_secs_f64(finite(args.poll_max, "--poll-max")?);
    if poll_max < poll_interval {
        return Err(Exit::new(
            exit::USAGE,
            "--poll-max must be at least --poll-interval",
        ));
    }
    if args.per_portal_concurrency == Some(0) {
        return Err(Exit::new(
            exit::USAGE,
            "--per-portal-concurrency must be at least 1",
        ));
    }
    let per_portal_concurrency = args.per_portal_concurrency.or(args
        .all_portals
        .then_some(b24_events::worker::DEFAULT_PER_PORTAL_CONCURRENCY));
    let retention_days = finite(args.processed_retention_days, "--processed-retention-days")?;
    // The value is not echoed: `NAME=VALUE` given by mistake may carry the secret itself.
    if args
        .handler_env
        .iter()
        .any(|n| n.is_empty() || n.contains('=') || n.contains('\0'))
    {
        return Err(Exit::new(
            exit::USAGE,
            "--handler-env takes one variable's name (NAME, not NAME=VALUE); the value is the worker's own",
        ));
    }
    // b24's own variables are never passed on by name: they hold its credentials (the webhook
    // URL, the client secret, the tokens, the store URL's password) or its configuration, and
    // a handler works on event data from outside — whatever it does wrong (logs its
    // environment, ships it to an error tracker) should not carry the portal's keys. The
    // worker sets B24_EVENT_* itself. A handler that calls the portal gets its own profile.
    if let Some(n) = args
        .handler_env
        .iter()
        .find(|n| n.to_ascii_uppercase().starts_with("B24_"))
    {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "--handler-env {n}: b24's own variables (B24_*) are not passed to handlers; they hold the worker's credentials and configuration (a handler that calls the portal should use its own profile)"
            ),
        ));
    }
    let handler = match (&args.exec, &args.forward) {
        (Some(cmd), _) => {
            Handler::exec(cmd.clone(), timeout).pass_env(args.handler_env.iter().cloned())
        }
        (None, Some(url)) => Handler::forward(url.clone(), timeout),
        (None, None) => {
            return Err(Exit::new(
                exit::USAGE,
                "a worker needs a handler: --exec CMD or --forward URL (there is no default handler that would acknowledge events without doing anything)",
            ));
        }
    };
    let store = Arc::new(open_store(g, args.store.as_deref()).await?);
    let client = if args.no_pull || args.all_portals {
        None
    } else {
        // The worker pulls, clears and fails offline events on its own for as long as it
        // runs: the policy must allow those calls (a read-only policy keeps it from
        // draining the portal's queue).
        let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli)?;
        gate.authorize_standing(
            "b24 worker",
            &[
                ("event.offline.get", serde_json::json!({"clear": 0})),
                ("event.offline.clear", serde_json::json!({})),
                ("event.offline.error", serde_json::json!({})),
            ],
        )
        .map_err(crate::exec::gate_error)?;
        // A long-running process: a pull blocked by the method's operating-time limit waits
        // for the budget instead of ending the worker.
        Some(g.client().await?.patient())
    };
    let stats = Arc::new(WorkerStats::default());
    let fleet_stats = Arc::new(b24_events::fleet::FleetStats::default());
    let stop = shutdown_token();
    // `--portal X`: the pulls use the client built at start, whose access token lives in
    // memory. Once X is removed or uninstalled here the worker stops, so nothing more reaches
    // X (checked each poll interval; without this it pulled until that token expired).
    let gone = Arc::new(std::sync::Mutex::new(None::<String>));
    if g.portal.is_some() && client.is_some() {
        let (stop, gone) = (stop.clone(), gone.clone());
        let check = crate::cmd::portals::still_installed();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(poll_interval) => {}
                }
                if let Err(why) = check().await {
                    *gone.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    stop.cancel();
                    return;
                }
            }
        });
    }
    // Its own token (a child of the shutdown): the fleet stops with the worker, and stopping
    // it does not make a finished `--once` run look interrupted.
    let fleet_stop = stop.child_token();
    let fleet = if args.all_portals {
        let gate = crate::exec::gate(g, b24_guard::gate::Origin::Cli)?;
        gate.authorize_standing(
            "b24 worker --all-portals",
            &[
                ("event.offline.get", serde_json::json!({"clear": 0})),
                ("event.offline.clear", serde_json::json!({})),
                ("event.offline.list", serde_json::json!({})),
            ],
        )
        .map_err(crate::exec::gate_error)?;
        let reg = crate::cmd::portals::open(g, args.store.as_deref()).await?;
        let fcfg = b24_events::fleet::FleetConfig {
            concurrency: args.pull_concurrency.max(1),
            per_portal_cap: args.per_portal_cap.max(1),
            poll_min: poll_interval,
            poll_max,
            ..Default::default()
        };
        let pulling = b24_events::fleet::run(
            reg.clone(),
            store.clone(),
            fcfg,
            crate::cmd::portals::factory(g.clone(), reg),
            fleet_stats.clone(),
            fleet_stop.clone(),
        );
        // Its end is only awaited when the worker stops: say at once if pulling ended early.
        Some(tokio::spawn(async move {
            let r = pulling.await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "--all-portals: pulling stopped");
            }
            r
        }))
    } else {
        None
    };
    if let Some(addr) = args.metrics_listen {
        let source = b24_events::worker::metrics::MetricsSource {
            store: store.clone(),
            worker: stats.clone(),
            client: client.clone(),
            fleet: args.all_portals.then(|| fleet_stats.clone()),
        };
        b24_events::worker::metrics::serve(addr, source)
            .await
            .map_err(|e| Exit::new(exit::USAGE, format!("--metrics-listen {addr}: {e}")))?;
    }
    let wake_watch =
        crate::cmd::portals::wake_watch(g, args.store.as_deref(), client.as_ref()).await;
    let cfg = WorkerConfig {
        id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        concurrency: args.concurrency.max(1),
        lease_secs: args.lease.max(1.0),
        retry: RetryRule {
            max_attempts: args.max_attempts.max(1),
            base_secs: args.retry_base.max(0.0),
            max_secs: 300.0,
        },
        pull: client,
        once: args.once,
        poll_interval,
        poll_max,
        processed_retention: (retention_days > 0.0)
            .then(|| Duration::from_secs_f64(retention_days * 86_400.0)),
        per_portal_concurrency,
        wake_watch,
    };
    b24_events::worker::run(store.clone(), handler, cfg, stats.clone(), stop.clone())
        .await
        .map_err(|e| match e {
            b24_events::EventsError::Portal(p) => anyhow::Error::new(p),
            other => Exit::new(exit::TRANSIENT, other.to_string()),
        })?;
    if let Some(f) = fleet {
        fleet_stop.cancel();
        let _ = f.await;
    }
    if let Some(why) = gone.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(Exit::new(exit::AUTH, format!("b24 worker stopped: {why}")));
    }
    let q = store.stats().await.unwrap_or_default();
    if !g.quiet {
        crate::errln!(
            "b24 worker: {} (queue: {} ready, {} dead)",
            stats.snapshot(),
            q.ready,
            q.dead
        );
    }
    Ok(if stop.is_cancelled() {
        exit::INTERRUPTED
    } else if args.once && stats.had_failures() {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    /// The handler's environment filter (b24-events cannot depend on the guard crate) drops
    /// at least every name the redactor calls secret, in the spellings environments use.
    #[test]
    fn handler_env_filter_covers_the_redactors_secret_names() {
        // The redactor's own list, and names that only contain one of its words.
        let words: Vec<&str> = b24_guard::redact::SECRET_KEYS
            .iter()
            .copied()
            .chain(["mytoken", "appsecret"])
            .collect();
        let mut checked = 0;
        for w in &words {
            for name in [w.to_string(), format!("MY_{w}"), format!("B24_{w}")] {
                for n in [name.clone(), name.to_ascii_uppercase()] {
                    if b24_guard::redact::is_secret_key(&n) {
                        checked += 1;
                        assert!(
                            b24_events::handler::env::is_secret_env_name(&n),
                            "{n} is secret to the redactor but would reach a handler"
                        );
                    }
                }
            }
        }
        assert!(checked >= words.len() * 4, "{checked}");
    }
}
