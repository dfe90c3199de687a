//! The online receiver: Bitrix24 POSTs events form-encoded and never redelivers them, so an
//! event is committed to the queue — durably, across power loss — *before* we answer 200.
//!
//! Order of work, cheapest and least trusting first:
//! 1. [`form::scan`]: size, field count and key lengths (400/413), and the few fields that
//!    authenticate the sender. No tree is built for an unauthenticated body.
//! 2. The `application_token` for `auth[member_id]`, compared in constant time (401). Installs
//!    and token rotations follow the [`crate::trust`] rules.
//! 3. Only then [`form::build`]. A body an authenticated portal sent that cannot be
//!    represented (nested too deep, bad encoding) is kept raw with the reason in
//!    [`Inbox::reject`] — never queued as `null`.
//! 4. Enqueue, flush (see [`Inbox::sync_queue`]), 200.
//!
//! Anything refused is not queued. The receiver notes the refusal — reason, the event name and
//! member id the body claimed, its size; never the body or a token — in a bounded log beside
//! the queue ([`crate::inbox::Refused`]), so `b24 dlq list --rejected` shows what was turned
//! away at the door.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::form::{self, Envelope, FormError, Limits};
use crate::inbox::Inbox;
use crate::installs::Installations;
use crate::queue::{NewEvent, Store};
use crate::trust::{self, TrustConfig};

/// Receiver settings.
pub struct ReceiverConfig {
    /// Reject bodies over this size with 413.
    pub max_body: usize,
    /// A token fixed by configuration (`B24_APPLICATION_TOKEN`): then install events cannot
    /// introduce another one.
    pub pinned_token: Option<String>,
}

/// Settings beyond [`ReceiverConfig`]: parser bounds and the install trust rules.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    /// `max_body` is taken from [`ReceiverConfig::max_body`].
    pub limits: Limits,
    pub trust: TrustConfig,
}

struct Shared {
    store: Store,
    inbox: Option<Inbox>,
    pinned: Option<String>,
    limits: Limits,
    trust: TrustConfig,
    http: reqwest::Client,
    verifying: Semaphore,
    /// How many refusals a second are noted (anyone can send a refused request).
    refusals: crate::inbox::RefusalBudget,
}

/// Open the queue and the receiver's side store at `url` and build the router. This is the
/// production path: dead letters for unrepresentable bodies and power-loss durability.
pub async fn open(url: &str, cfg: ReceiverConfig, opts: ReceiverOptions) -> crate::Result<Router> {
    let store = Store::open(url).await?;
    let inbox = Inbox::open(url).await?;
    Ok(router_with(store, Some(inbox), cfg, opts))
}

/// The axum router (mount it anywhere; every path accepts events), with default options and
/// no side store: installs are refused unless a token is pinned, unrepresentable bodies get
/// 400, and an enqueue is only as durable as the store's own commit. Prefer [`open`].
pub fn router(store: Store, cfg: ReceiverConfig) -> Router {
    router_with(store, None, cfg, ReceiverOptions::default())
}

/// The router over an opened store and side store.
pub fn router_with(
    store: Store,
    inbox: Option<Inbox>,
    cfg: ReceiverConfig,
    opts: ReceiverOptions,
) -> Router {
    let limits = Limits {
        max_body: cfg.max_body,
        ..opts.limits
    };
    let shared = Arc::new(Shared {
        store,
        inbox,
        pinned: cfg.pinned_token,
        limits,
        http: trust::http_client(&opts.trust),
        verifying: Semaphore::new(opts.trust.max_concurrent_verifications.max(1)),
        trust: opts.trust,
        refusals: Default::default(),
    });
    Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .layer(DefaultBodyLimit::max(cfg.max_body))
        .with_state(shared)
}

fn reply(status: StatusCode, error: &str) -> Response {
    let v = if status == StatusCode::OK {
        json!({"status": "ok"})
    } else {
        json!({"status": "error", "error": error})
    };
    (status, axum::Json(v)).into_response()
}

fn unavailable() -> Response {
    reply(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The key of an online delivery: a digest of the request path and the whole body.
///
/// Bitrix24 gives no delivery id. Two distinct deliveries differ somewhere in their bodies
/// (`ts`, `data`, the handler id, the user's access token), so they get distinct keys; a
/// byte-identical replay of one delivery gets the same key and is stored once.
pub fn online_key(path: &str, body: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    format!("online:{}", hex::encode(h.finalize()))
}

fn well_formed(env: &Envelope) -> bool {
    !env.member_id.is_empty()
        && env.member_id.len() <= 128
        && !env.application_token.is_empty()
        && env.application_token.len() <= 256
        && !env.event.is_empty()
        && env.event.len() <= 128
        && env
            .event
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// What authentication decided.
enum Auth {
    /// The stored (or pinned) token matched.
    Known,
    /// A new portal or a rotated token, confirmed: record `token` for the member on `domain`.
    Admit {
        domain: String,
    },
    Refuse(&'static str),
}

impl Shared {
    async fn authenticate(&self, event: &str, env: &Envelope) -> crate::Result<Auth> {
        if let Some(pinned) = &self.pinned {
            // Pinned by the operator: nothing can introduce or rotate a token.
            return Ok(if same(pinned, &env.application_token) {
                Auth::Known
            } else {
                Auth::Refuse("invalid_application_token")
            });
        }
        let stored = self.store.app_token(&env.member_id).await?;
        match (stored, event) {
            (Some(t), _) if same(&t, &env.application_token) => Ok(Auth::Known),
            // A rotation (an update, or a re-install whose uninstall we never saw): only with
            // a confirmation by the portal this member was verified on at install (not the
            // one the body names).
            (Some(_), "ONAPPUPDATE" | "ONAPPINSTALL") => {
                let known = match &self.inbox {
                    Some(i) => i.portal(&env.member_id).await?,
                    None => None,
                };
                match known {
                    Some(d) => self.confirm(&d, env).await,
                    None => self.admit_new(env).await,
                }
            }
            (Some(_), _) => Ok(Auth::Refuse("invalid_application_token")),
            (None, "ONAPPINSTALL") => self.admit_new(env).await,
            (None, _) => Ok(Auth::Refuse("unknown_member_id")),
        }
    }

    /// A portal we have no token for: approved by the operator, not recorded for another
    /// member, and confirmed by the portal itself.
    async fn admit_new(&self, env: &Envelope) -> crate::Result<Auth> {
        let domain = env.domain.to_ascii_lowercase();
        if !self.trust.approves(&domain, &env.member_id) {
            return Ok(Auth::Refuse("portal_not_approved"));
        }
        let Some(inbox) = &self.inbox else {
            return Ok(Auth::Refuse("portal_not_approved"));
        };
        if let Some(m) = inbox.member_of(&domain).await?
            && m != env.member_id
        {
            return Ok(Auth::Refuse("portal_recorded_for_another_member"));
        }
        self.confirm(&domain, env).await
    }

    async fn confirm(&self, domain: &str, env: &Envelope) -> crate::Result<Auth> {
        let Ok(_permit) = self.verifying.acquire().await else {
            return Ok(Auth::Refuse("verification_unavailable"));
        };
        match trust::confirm_with_portal(
            &self.trust,
            &self.http,
            domain,
            &env.access_token,
            &env.member_id,
        )
        .await
        {
            Ok(()) => Ok(Auth::Admit {
                domain: domain.to_string(),
            }),
            Err(why) => {
                tracing::warn!(member_id = %env.member_id, %why, "install/update not confirmed by the portal");
                Ok(Auth::Refuse("not_confirmed_by_portal"))
            }
        }
    }
}

/// Tokens in the payload are the caller's credentials: keep them out of the queue.
fn redact(payload: &mut Value) {
    if let Some(auth) = payload.get_mut("auth").and_then(|a| a.as_object_mut()) {
        for k in ["access_token", "refresh_token", "application_token"] {
            if auth.contains_key(k) {
                auth.insert(k.into(), json!("[redacted]"));
            }
        }
    }
}

/// Refuse a delivery at the door, noting it (within the per-second budget) when there is a
/// side store. What is noted is the reason and the body's claims, never the body.
async fn refuse(
    sh: &Shared,
    status: StatusCode,
    reason: &str,
    error: &str,
    claimed: Option<&Envelope>,
    bytes: usize,
) -> Response {
    if let (Some(inbox), Some(more)) = (&sh.inbox, sh.refusals.take()) {
        let (event, member) = claimed
            .map(|e| (e.event.as_str(), e.member_id.as_str()))
            .unwrap_or(("", ""));
        if let Err(e) = inbox.refused(reason, event, member, bytes, more).await {
            tracing::warn!("a refused delivery could not be noted: {e}");
        }
    }
    reply(status, error)
}

async fn receive(
    State(sh): State<Arc<Shared>>,
    uri: Uri,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        // Over the body limit (413), or a body that could not be read.
        Err(e) => {
            let status = e.status();
            let why = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable_body"
            };
            return refuse(&sh, status, why, why, None, 0).await;
        }
    };
    let n = body.len();
    let env = match form::scan(&body, &sh.limits) {
        Ok(env) => env,
        Err(FormError::TooLarge(_)) => {
            return refuse(
                &sh,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "too_large",
                None,
                n,
            )
            .await;
        }
        Err(_) => {
            return refuse(
                &sh,
                StatusCode::BAD_REQUEST,
                "malformed_body",
                "malformed_body",
                None,
                n,
            )
            .await;
        }
    };
    if !well_formed(&env) {
        return refuse(
            &sh,
            StatusCode::BAD_REQUEST,
            "missing_fields",
            "missing event, auth[member_id] or auth[application_token]",
            Some(&env),
            n,
        )
        .await;
    }
    let event = env.event.to_ascii_uppercase();
    let admit = match sh.authenticate(&event, &env).await {
        Ok(Auth::Known) => None,
        Ok(Auth::Admit { domain }) => Some(domain),
        Ok(Auth::Refuse(why)) => {
            return refuse(&sh, StatusCode::UNAUTHORIZED, why, why, Some(&env), n).await;
        }
        Err(_) => return unavailable(),
    };

    // Authenticated from here on.
    if event == crate::worker::WAKE_EVENT
        && let Some(i) = &sh.inbox
        && sh.pinned.is_none()
    {
        // An installed portal's wake-up is its registry row's `wake_at`, which its pullers
        // read: queueing it as well cost every host a claim and a completion per offline
        // event, for nothing. Only a portal without such a row (a webhook set-up, a pinned
        // token) gets the queued notification a single-portal worker acts on. A pinned token
        // authenticates the token, not the member id the body names: its sender could wake
        // any installed portal's row, so its wake-ups are always queued.
        match Installations::from_inbox(i.clone())
            .wake(&env.member_id)
            .await
        {
            Ok(true) => return reply(StatusCode::OK, ""),
            Ok(false) => {}
            Err(_) => return unavailable(),
        }
    }
    let key = online_key(uri.path(), &body);
    let mut pair = None;
    match form::build(&body, &sh.limits) {
        Ok(mut payload) => {
            if matches!(event.as_str(), "ONAPPINSTALL" | "ONAPPUPDATE") {
                pair = crate::installs::pair_from_event(&payload);
            }
            redact(&mut payload);
            let new = NewEvent {
                key,
                source: "online".into(),
                name: event.clone(),
                payload,
            };
            if sh.store.enqueue(&[new]).await.is_err() {
                // Nothing is committed: do not answer 200.
                return unavailable();
            }
            if let Some(i) = &sh.inbox
                && i.sync_queue().await.is_err()
            {
                return unavailable();
            }
        }
        Err(why) => {
            let Some(inbox) = &sh.inbox else {
                return reply(StatusCode::BAD_REQUEST, "unrepresentable_body");
            };
            tracing::warn!(member_id = %env.member_id, %event, %why, "event kept as a reject");
            if inbox
                .reject(&key, &env.member_id, &event, &why.to_string(), &body)
                .await
                .is_err()
            {
                return unavailable();
            }
        }
    }
    if lifecycle(&sh, &event, &env, admit, pair).await.is_err() {
        return unavailable();
    }
    reply(StatusCode::OK, "")
}

/// Record a confirmed install or rotation (with the OAuth pair the event carried, in the
/// installations registry); on uninstall forget the portal's token and end its installation.
async fn lifecycle(
    sh: &Shared,
    event: &str,
    env: &Envelope,
    admit: Option<String>,
    pair: Option<b24::auth::TokenPair>,
) -> crate::Result<()> {
    match (event, admit) {
        ("ONAPPINSTALL" | "ONAPPUPDATE", Some(domain)) => {
            if let Some(i) = &sh.inbox {
                i.set_portal(&env.member_id, Some(&domain)).await?;
                Installations::from_inbox(i.clone())
                    .record_install(&env.member_id, &domain, pair.as_ref())
                    .await?;
            }
            sh.store
                .set_app_token(&env.member_id, Some(&env.application_token))
                .await
        }
        // A pinned token authenticates the token, not the member id the body names: a pinned
        // receiver sharing its store with an app's receiver must not overwrite another
        // member's stored token (its holder could then sign that portal's events).
        ("ONAPPINSTALL" | "ONAPPUPDATE", None) if sh.pinned.is_some() => {
            match sh.store.app_token(&env.member_id).await? {
                Some(t) if !same(&t, &env.application_token) => Ok(()),
                _ => {
                    sh.store
                        .set_app_token(&env.member_id, Some(&env.application_token))
                        .await
                }
            }
        }
        // A known portal updating with its current token: keep its installation's tokens fresh.
        ("ONAPPINSTALL" | "ONAPPUPDATE", None) if sh.pinned.is_none() => {
            if let (Some(i), Some(p)) = (&sh.inbox, pair.as_ref())
                && let Some(d) = i.portal(&env.member_id).await?
            {
                Installations::from_inbox(i.clone())
                    .record_install(&env.member_id, &d, Some(p))
                    .await?;
            }
            Ok(())
        }
        // Nor may it end another member's installation, or forget a token it did not set.
        ("ONAPPUNINSTALL", _) if sh.pinned.is_some() => {
            match sh.store.app_token(&env.member_id).await? {
                Some(t) if same(&t, &env.application_token) => {
                    sh.store.set_app_token(&env.member_id, None).await
                }
                _ => Ok(()),
            }
        }
        ("ONAPPUNINSTALL", _) => {
            if let Some(i) = &sh.inbox {
                i.set_portal(&env.member_id, None).await?;
                Installations::from_inbox(i.clone())
                    .end(&env.member_id, "uninstalled")
                    .await?;
            }
            sh.store.set_app_token(&env.member_id, None).await
        }
        _ => Ok(()),
    }
}
