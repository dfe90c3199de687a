//! Many portals in one process: one application installed on N portals.
//!
//! A Bitrix24 app (local or marketplace) has one `client_id`/`client_secret` and lives on many
//! portals at once; each installation brings its own domain, `member_id`, OAuth pair,
//! `application_token`, leaky bucket, operating-time baskets, offline queue and records. The
//! sandbox models that as N complete portals, each a [`Sandbox`] with its own state and its own
//! listener (`127.0.0.1:PORT` is its domain), sharing only the application's credentials.
//!
//! Why one listener per portal rather than one listener with path prefixes: a portal's domain
//! is a host name, and the receiver's install check calls `https://{domain}/rest/app.info` on
//! exactly that host (see `b24-events` `trust`): a path in the domain would be refused there,
//! and rightly so. Separate listeners keep every portal's address a plain `host:port`.
//!
//! Portal 0 is exactly what `start` would have started with the same configuration, so a
//! single-portal run is unchanged. The install lifecycle a real portal drives when an admin
//! installs or removes the app is emulated by [`Sandbox::install_app`] and
//! [`Sandbox::uninstall_app`] (also `POST /_sandbox/install?handler=URL` and
//! `/_sandbox/uninstall?handler=URL`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::events::flatten;
use crate::server::{Shared, lock};
use crate::{Sandbox, SandboxConfig, SandboxError, StartInfo};

/// N portals with one application installed (or installable) on each.
pub struct Portals {
    portals: Vec<Sandbox>,
}

/// The seed of portal `i`: portal 0 keeps the configured seed (single-portal runs unchanged).
fn portal_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Start `n` portals (at least one). With a fixed port in `cfg.listen`, portal `i` listens on
/// that port + `i`; with port 0 each picks a free one.
pub async fn start_many(cfg: SandboxConfig, n: usize) -> Result<Portals, SandboxError> {
    let n = n.max(1);
    let mut portals: Vec<Sandbox> = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = cfg.clone();
        c.seed = portal_seed(cfg.seed, i);
        if cfg.listen.port() != 0 {
            let port = u16::try_from(usize::from(cfg.listen.port()) + i).map_err(|_| {
                SandboxError::Listen {
                    addr: cfg.listen,
                    source: std::io::Error::other("port range exhausted"),
                }
            })?;
            c.listen = SocketAddr::new(cfg.listen.ip(), port);
        }
        let mut sb = match crate::server::start(c).await {
            Ok(sb) => sb,
            Err(e) => {
                for p in portals {
                    p.shutdown().await;
                }
                return Err(e);
            }
        };
        if let Some(first) = portals.first() {
            // One application: every portal knows the same client id and secret.
            let (id, secret) = (
                first.info.client_id.clone(),
                first.info.client_secret.clone(),
            );
            {
                let mut st = lock(&sb.state);
                st.client_id = id.clone();
                st.client_secret = secret.clone();
            }
            sb.info.client_id = id;
            sb.info.client_secret = secret;
        }
        portals.push(sb);
    }
    let group: Arc<Vec<Weak<Mutex<crate::state::State>>>> =
        Arc::new(portals.iter().map(|p| Arc::downgrade(&p.state)).collect());
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    for p in &portals {
        g.insert(group_key(&p.state), group.clone());
    }
    Ok(Portals { portals })
}

/// Portal (by the address of its state) → every portal of its group. The OAuth server of a
/// real app is central (`oauth.bitrix.info`): a refresh token of any portal is exchanged at one
/// address, so each portal's `/oauth/token/` here answers for its siblings too.
type Group = Arc<Vec<Weak<Mutex<crate::state::State>>>>;
static GROUPS: LazyLock<Mutex<HashMap<usize, Group>>> = LazyLock::new(Default::default);

fn group_key(s: &Shared) -> usize {
    Arc::as_ptr(s) as usize
}

/// The portal that issued `refresh_token`: `shared` itself, or a sibling of its group.
pub(crate) fn oauth_home(shared: &Shared, refresh_token: &str) -> Shared {
    if refresh_token.is_empty() || lock(shared).refresh.contains_key(refresh_token) {
        return shared.clone();
    }
    let group = GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&group_key(shared))
        .cloned();
    for s in group
        .iter()
        .flat_map(|g| g.iter())
        .filter_map(Weak::upgrade)
    {
        if lock(&s).refresh.contains_key(refresh_token) {
            return s;
        }
    }
    shared.clone()
}

impl Drop for Portals {
    fn drop(&mut self) {
        let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        for p in &self.portals {
            g.remove(&group_key(&p.state));
        }
    }
}

impl Portals {
    pub fn len(&self) -> usize {
        self.portals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.portals.is_empty()
    }

    /// Portal `i` (0-based).
    pub fn get(&self, i: usize) -> Option<&Sandbox> {
        self.portals.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sandbox> {
        self.portals.iter()
    }

    /// The portal with this `member_id` or domain (`127.0.0.1:PORT`).
    pub fn find(&self, key: &str) -> Option<&Sandbox> {
        self.portals
            .iter()
            .find(|p| p.info.member_id == key || p.info.domain.eq_ignore_ascii_case(key))
    }

    /// Every portal's start info, in order.
    pub fn infos(&self) -> Vec<StartInfo> {
        self.portals.iter().map(|p| p.info.clone()).collect()
    }

    /// Stop every portal.
    pub async fn shutdown(mut self) {
        {
            let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
            for p in &self.portals {
                g.remove(&group_key(&p.state));
            }
        }
        for p in std::mem::take(&mut self.portals) {
            p.shutdown().await;
        }
    }

    /// One token cancels them all (Ctrl-C in `b24 sandbox --portals N`).
    pub fn shutdown_tokens(&self) -> Vec<tokio_util::sync::CancellationToken> {
        self.portals.iter().map(|p| p.shutdown_token()).collect()
    }
}

/// What an install or uninstall delivery got from the app's handler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleOutcome {
    /// HTTP status of the handler's answer (0: no answer).
    pub status: u16,
}

/// The form a portal POSTs to the app's handler for `ONAPPINSTALL` (fresh OAuth pair for the
/// installing admin) or `ONAPPUNINSTALL` (no tokens: the app is already gone from the portal).
fn lifecycle_form(st: &mut crate::state::State, event: &str) -> Vec<(String, String)> {
    let now = st.now();
    let mut auth = json!({
        "domain": st.domain,
        "member_id": st.member_id,
        "application_token": st.application_token,
        "server_endpoint": format!("{}/rest/", st.base_url),
        "client_endpoint": format!("{}/rest/", st.base_url),
        "status": "L",
    });
    let data = if event == "ONAPPINSTALL" {
        let (access, refresh) = st.issue_pair(1);
        let ttl = st.cfg.access_token_ttl.as_secs();
        auth["access_token"] = json!(access);
        auth["refresh_token"] = json!(refresh);
        auth["expires_in"] = json!(ttl.to_string());
        auth["expires"] = json!(((now as u64) + ttl).to_string());
        auth["scope"] = json!(st.app_scope_text());
        auth["user_id"] = json!("1");
        json!({"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"})
    } else {
        json!({"CLEAN": "0"})
    };
    let payload = json!({
        "event": event,
        "event_handler_id": "0",
        "data": data,
        "ts": (now as u64).to_string(),
        "auth": auth,
    });
    let mut form = Vec::new();
    flatten("", &payload, &mut form);
    form
}

async fn deliver(form: Vec<(String, String)>, handler: &str) -> LifecycleOutcome {
    crate::install_crypto_provider();
    #[allow(clippy::disallowed_methods)] // the provider is installed just above
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let status = match client.post(handler).form(&form).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    LifecycleOutcome { status }
}

/// Install the app on the portal behind `shared`: POST `ONAPPINSTALL` to `handler`.
pub(crate) async fn install(shared: &Shared, handler: &str) -> LifecycleOutcome {
    let form = {
        let mut st = lock(shared);
        lifecycle_form(&mut st, "ONAPPINSTALL")
    };
    deliver(form, handler).await
}

/// Remove the app: every token of the app on this portal is revoked and its event bindings and
/// offline queue are dropped (as on a portal), then `ONAPPUNINSTALL` goes to `handler`.
pub(crate) async fn uninstall(shared: &Shared, handler: &str) -> LifecycleOutcome {
    let form = {
        let mut st = lock(shared);
        let form = lifecycle_form(&mut st, "ONAPPUNINSTALL");
        st.revoke_tokens();
        st.bindings.clear();
        st.offline.clear();
        form
    };
    deliver(form, handler).await
}

impl Sandbox {
    /// An admin installs the app on this portal: the portal POSTs `ONAPPINSTALL` (with a fresh
    /// OAuth pair and the portal's `application_token`) to `handler`.
    pub async fn install_app(&self, handler: &str) -> LifecycleOutcome {
        install(&self.state, handler).await
    }

    /// An admin removes the app: tokens revoked, bindings and offline queue dropped, then
    /// `ONAPPUNINSTALL` (no tokens, the `application_token` to authenticate it) to `handler`.
    pub async fn uninstall_app(&self, handler: &str) -> LifecycleOutcome {
        uninstall(&self.state, handler).await
    }

    /// Queue offline events on this portal as if `n` leads had been added by a user (bypassing
    /// the bucket: the user works in the browser, not through the app's REST budget).
    pub fn emit_lead_adds(&self, n: usize) -> usize {
        let mut st = lock(&self.state);
        let who = crate::methods::Caller {
            kind: "user",
            user_id: 1,
            cred: "browser".into(),
            connector: String::new(),
        };
        let mut dl = Vec::new();
        let mut made = 0;
        for k in 0..n {
            let r = crate::methods::call(
                &mut st,
                &who,
                "crm.lead.add",
                &json!({"fields": {"TITLE": format!("lead {k}")}}),
                &mut dl,
            );
            if r.is_ok() {
                made += 1;
            }
        }
        st.notify_offline(&mut dl);
        drop(st);
        crate::server::spawn_deliveries(self.state.clone(), dl);
        made
    }
}

/// `?handler=URL` of the control endpoints.
pub(crate) fn handler_param(q: &std::collections::HashMap<String, String>) -> Option<String> {
    q.get("handler")
        .filter(|h| h.starts_with("http://") || h.starts_with("https://"))
        .cloned()
}

/// The JSON a control endpoint answers with.
pub(crate) fn outcome_json(o: &LifecycleOutcome) -> Value {
    json!({"handler_status": o.status})
}

/// `POST /_sandbox/install?handler=URL`.
pub(crate) async fn ctl_install(
    axum::extract::State((shared, _)): axum::extract::State<crate::server::AppState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match handler_param(&q) {
        Some(h) => axum::Json(outcome_json(&install(&shared, &h).await)).into_response(),
        None => bad_handler(),
    }
}

/// `POST /_sandbox/uninstall?handler=URL`.
pub(crate) async fn ctl_uninstall(
    axum::extract::State((shared, _)): axum::extract::State<crate::server::AppState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match handler_param(&q) {
        Some(h) => axum::Json(outcome_json(&uninstall(&shared, &h).await)).into_response(),
        None => bad_handler(),
    }
}

fn bad_handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "handler=http(s)://… is required"})),
    )
        .into_response()
}
