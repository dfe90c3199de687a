//! `b24 portals list|show|remove`, and the client behind `b24 --portal DOMAIN|MEMBER_ID …`.
//!
//! The installations are recorded by the receiver (`b24 events serve`) once each portal has
//! confirmed its install; they live beside the queue (`B24_STORE_URL`, or `queue.db` in the
//! state dir). This command only renders what `b24_events::installs` decides.

use std::sync::Arc;

use b24_events::installs::{Installation, Installations};
use serde_json::{Value, json};

use crate::exit::{self, Exit};
use crate::globals::Globals;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  b24 portals list                         # one JSON line per installation
  b24 portals show a223c6b3710f85df22e9377d6c4f7553
  b24 --portal example.bitrix24.com call crm.lead.list
  b24 portals remove example.bitrix24.com  # forget its tokens (the portal keeps the app)")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Installations store: a SQLite path (default: queue.db in the state dir) or postgres://…
    #[arg(long, env = "B24_STORE_URL", global = true)]
    pub store: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Every installation: state, token state, rate bucket level and queue depth.
    #[command(after_help = "Example:\n  b24 portals list | jq -c 'select(.queue_depth > 100)'")]
    List,
    /// One installation by domain or member id.
    #[command(after_help = "Example:\n  b24 portals show example.bitrix24.com")]
    Show {
        #[arg(value_name = "DOMAIN|MEMBER_ID")]
        key: String,
    },
    /// Forget a portal here: its tokens are deleted (the row stays, marked `removed`).
    #[command(after_help = "Example:\n  b24 portals remove a223c6b3710f85df22e9377d6c4f7553")]
    Remove {
        #[arg(value_name = "DOMAIN|MEMBER_ID")]
        key: String,
    },
}

/// The store URL: `--store`/`B24_STORE_URL`, else `queue.db` in the state dir (where
/// `b24 events serve` keeps it by default).
fn store_url(g: &Globals, url: Option<&str>) -> anyhow::Result<String> {
    let url = match url {
        Some(u) => u.to_string(),
        None => match g.lookup()?("B24_STORE_URL") {
            Some(u) => u,
            None => g.state_dir().join("queue.db").display().to_string(),
        },
    };
    b24::config::store_kind(&url).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    Ok(url)
}

pub async fn open(g: &Globals, url: Option<&str>) -> anyhow::Result<Installations> {
    let url = store_url(g, url)?;
    if !url.contains("://") && !std::path::Path::new(&url).exists() {
        return Err(Exit::new(
            exit::USAGE,
            format!("no installations store at {url}: run `b24 events serve` to record installs"),
        ));
    }
    Installations::open(&url)
        .await
        .map_err(|e| Exit::new(exit::INTERNAL, e.to_string()))
}

/// The installation `key` names: a member id exactly, or a domain. A domain that two
/// installed rows share (a portal moved to a new address while another kept or took the old
/// one) is refused as ambiguous rather than resolved to whichever row the store returns
/// first; the member id still names one. Rows no longer installed do not make it ambiguous.
async fn find(reg: &Installations, key: &str) -> anyhow::Result<Installation> {
    let internal = |e: b24_events::EventsError| Exit::new(exit::INTERNAL, e.to_string());
    let found = reg.find(key).await.map_err(internal)?.ok_or_else(|| {
        Exit::new(
            exit::USAGE,
            format!("no installation for portal `{key}` (see `b24 portals list`)"),
        )
    })?;
    if found.member_id == key {
        return Ok(found);
    }
    let mut live: Vec<Installation> = reg
        .list()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|i| i.domain.eq_ignore_ascii_case(key) && i.is_installed())
        .collect();
    match live.len() {
        0 => Ok(found),
        1 => Ok(live.remove(0)),
        _ => {
            let ids: Vec<&str> = live.iter().map(|i| i.member_id.as_str()).collect();
            Err(Exit::new(
                exit::USAGE,
                format!(
                    "portal `{key}` is ambiguous: installations {} share that domain; name one by its member id",
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// `https://domain`, or plain http for a loopback portal (the local sandbox).
fn base(domain: &str) -> String {
    let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
    if b24::config::is_loopback_host(host) {
        format!("http://{domain}")
    } else {
        format!("https://{domain}")
    }
}

/// The configuration for an installed portal: the app's credentials and limits from the
/// usual settings, the portal's address from its installation, tokens from the registry.
fn config_for(g: &Globals, inst: &Installation) -> anyhow::Result<b24::Config> {
    let lookup = g.lookup()?;
    let domain = base(&inst.domain);
    let get = move |k: &str| match k {
        "B24_AUTH_MODE" => Some("oauth".to_string()),
        "B24_DOMAIN" => Some(domain.clone()),
        // The installation's pair is the only one that may act for this portal.
        "B24_WEBHOOK_URL" | "B24_WEBHOOK_CODE" | "B24_ACCESS_TOKEN" | "B24_REFRESH_TOKEN"
        | "B24_PORTAL" | "B24_TOKEN_STORE" => None,
        other => lookup(other),
    };
    let cfg = b24::Config::from_lookup(&get, g.state_dir())
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    b24_guard::redact::remember(cfg.secrets());
    Ok(cfg)
}

/// The configuration `--portal` resolved to (set by [`prime`]); the gate binds its records to
/// this portal.
static PORTAL_CONFIG: std::sync::OnceLock<b24::Config> = std::sync::OnceLock::new();

/// With `--portal`: resolve the installation once, before any command runs, so that the gate
/// and every command see that portal's configuration and share its client.
pub async fn prime(g: &Globals) -> anyhow::Result<()> {
    if g.portal.is_some() {
        g.client().await?;
    }
    Ok(())
}

/// The registry and member id of the `--portal` installation (set by [`client`]), for
/// [`still_installed`].
static PORTAL_REG: std::sync::OnceLock<(Installations, String)> = std::sync::OnceLock::new();

/// With `--portal`: whether the installation is still installed, asked before every call a
/// gate sends. The process's client keeps its access token in memory, so without this a
/// long-running `b24 mcp --portal X` went on calling X after `b24 portals remove X` (or the
/// portal's uninstall) until that token expired.
pub fn still_installed() -> b24_guard::gate::StillAllowed {
    Arc::new(|| {
        Box::pin(async {
            let Some((reg, member)) = PORTAL_REG.get() else {
                return Err("--portal: the installation is not resolved".to_string());
            };
            match reg.find(member).await {
                Ok(Some(i)) if i.member_id == *member && i.is_installed() => Ok(()),
                Ok(Some(i)) => Err(format!(
                    "portal {} ({}) is {}: its tokens are gone here, so nothing is sent",
                    i.domain, i.member_id, i.state
                )),
                Ok(None) => Err(format!(
                    "portal {member} is no longer in the installations store; nothing is sent"
                )),
                Err(e) => Err(format!(
                    "the installations store cannot be read ({e}); nothing is sent"
                )),
            }
        })
    })
}

/// The configuration of the `--portal` installation (after [`prime`]).
pub fn resolved_config() -> anyhow::Result<b24::Config> {
    PORTAL_CONFIG
        .get()
        .cloned()
        .ok_or_else(|| Exit::new(exit::USAGE, "--portal: the installation is not resolved"))
}

/// The client for `b24 --portal KEY …`: the installation's address and OAuth pair, its own
/// rate bucket (keyed by its domain) and its own refresh lock (keyed by its member id).
pub async fn client(g: &Globals, key: &str) -> anyhow::Result<b24::Client> {
    let reg = open(g, None).await?;
    let inst = find(&reg, key).await?;
    if !inst.is_installed() {
        return Err(Exit::new(
            exit::AUTH,
            format!(
                "portal {} ({}) is {}: its tokens are gone",
                inst.domain, inst.member_id, inst.state
            ),
        ));
    }
    if let Some(p) = &inst.pair {
        b24_guard::redact::remember(vec![p.access_token.clone(), p.refresh_token.clone()]);
    }
    let cfg = config_for(g, &inst)?;
    b24::auth::ensure_private_dir(&cfg.state_dir)
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let store = Arc::new(reg.token_store(&inst.member_id));
    let _ = PORTAL_REG.set((reg.clone(), inst.member_id.clone()));
    let _ = PORTAL_CONFIG.set(cfg.clone());
    b24::Client::with_token_store(cfg, Some(store))
        .await
        .map_err(anyhow::Error::new)
}

/// The registry row a single-portal `b24 worker` watches for its portal's wake-ups (the
/// receiver records an installed portal's `ONOFFLINEEVENT` there and no longer queues it):
/// the `--portal` it serves, or the installed portal its client's address names (looked for
/// again while it has no row: the receiver may record the install later). `None` when there
/// is no registry; a portal without an installed row gets its wake-ups queued.
pub async fn wake_watch(
    g: &Globals,
    store: Option<&str>,
    client: Option<&b24::Client>,
) -> Option<b24_events::worker::WakeWatch> {
    let client = client?;
    if let Some((reg, member)) = PORTAL_REG.get() {
        return Some(b24_events::worker::WakeWatch::new(reg.clone(), member));
    }
    let reg = open(g, store).await.ok()?;
    Some(b24_events::worker::WakeWatch::by_domain(
        reg,
        client.portal(),
    ))
}

/// Clients for `b24 worker --all-portals`: each installed portal with its own address,
/// tokens (refresh locked per member id) and bucket, the app's credentials from the settings.
pub fn factory(g: Globals, reg: Installations) -> b24_events::fleet::ClientFactory {
    Arc::new(move |inst: Installation| {
        let (g, reg) = (g.clone(), reg.clone());
        Box::pin(async move {
            let cfg = config_for(&g, &inst)
                .map_err(|e| b24_events::EventsError::Config(format!("{e:#}")))?;
            let store = Arc::new(reg.token_store(&inst.member_id));
            Ok(b24::Client::with_token_store(cfg, Some(store)).await?)
        })
    })
}

/// One limiter over the configured rate store, to read every portal's bucket level.
async fn bucket_reader(g: &Globals, inst: &Installation) -> Option<b24::limiter::Limiter> {
    use b24::config::LimiterBackend;
    let cfg = config_for(g, inst).ok()?;
    let store: Box<dyn b24::limiter::RateStore> = match &cfg.limiter {
        LimiterBackend::Sqlite(path) => {
            if !path.exists() {
                return None;
            }
            Box::new(b24::limiter::SqliteStore::open(path).ok()?)
        }
        LimiterBackend::Postgres => {
            use secrecy::ExposeSecret;
            let url = cfg.store_url.as_ref()?.expose_secret().to_string();
            Box::new(b24::pg::PgStore::connect(&url).await.ok()?.rate_store())
        }
        _ => return None,
    };
    Some(b24::limiter::Limiter::new(
        store,
        cfg.limits,
        Box::new(b24::limiter::SystemClock),
    ))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn row(i: &Installation, depth: i64, bucket: Option<f64>) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
    v["token_state"] = json!(i.token_state(now_unix()));
    v["token_expires"] = json!(i.pair.as_ref().and_then(|p| p.expires));
    v["queue_depth"] = json!(depth);
    v["bucket_level"] = json!(bucket.map(|b| (b * 100.0).round() / 100.0));
    v
}

pub async fn run(args: Args, g: &Globals) -> anyhow::Result<i32> {
    let reg = open(g, args.store.as_deref()).await?;
    let internal = |e: b24_events::EventsError| Exit::new(exit::INTERNAL, e.to_string());
    match args.cmd {
        Cmd::List => {
            let all = reg.list().await.map_err(internal)?;
            let depths = reg.queue_depths().await.map_err(internal)?;
            let limiter = match all.first() {
                Some(i) => bucket_reader(g, i).await,
                None => None,
            };
            for i in &all {
                let bucket = match &limiter {
                    Some(l) => l.level(&i.domain).await.ok(),
                    None => None,
                };
                let depth = depths.get(&i.member_id).copied().unwrap_or(0);
                crate::outln!("{}", row(i, depth, bucket))?;
            }
            Ok(exit::OK)
        }
        Cmd::Show { key: portal } => {
            let i = find(&reg, &portal).await?;
            let depths = reg.queue_depths().await.map_err(internal)?;
            let bucket = match bucket_reader(g, &i).await {
                Some(l) => l.level(&i.domain).await.ok(),
                None => None,
            };
            let depth = depths.get(&i.member_id).copied().unwrap_or(0);
            crate::outln!("{}", row(&i, depth, bucket))?;
            Ok(exit::OK)
        }
        Cmd::Remove { key: portal } => {
            let i = find(&reg, &portal).await?;
            reg.end(&i.member_id, "removed").await.map_err(internal)?;
            // Its application token goes too: events claiming to come from it are refused
            // until a verified install records it again.
            let url = store_url(g, args.store.as_deref())?;
            let q = b24_events::Store::open(&url).await.map_err(internal)?;
            q.set_app_token(&i.member_id, None)
                .await
                .map_err(internal)?;
            let inbox = b24_events::inbox::Inbox::open(&url)
                .await
                .map_err(internal)?;
            inbox
                .set_portal(&i.member_id, None)
                .await
                .map_err(internal)?;
            crate::outln!(
                "{}",
                json!({"member_id": i.member_id, "domain": i.domain, "state": "removed"})
            )?;
            Ok(exit::OK)
        }
    }
}
