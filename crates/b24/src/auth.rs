//! OAuth 2.0 tokens: storage, and a refresh that happens once however many callers need it.
//!
//! Bitrix24 rotates the refresh token on every refresh (docs/protocol.md §3.3), so two
//! refreshes of the same token race: the loser holds a consumed token and gets `invalid_grant`.
//! We prevent that at two levels. In one process, callers wait on an async mutex and compare a
//! generation counter: whoever saw an older token than the current one just uses the new one.
//! Across processes, the refresher holds an exclusive lock on `<token file>.lock` and re-reads
//! the token file after taking it: if another process already rotated the pair, it adopts it.
//! The rotated pair is written atomically (temp file, fsync, rename) with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::envelope::{Parsed, lenient_u64, parse};

mod held;
pub use held::live_secrets;

/// An access/refresh pair as stored on disk. Outside this crate, start from
/// [`TokenPair::new`] and set the optional fields.
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenPair {
    /// The token sent as `auth` with every call.
    pub access_token: String,
    /// The token exchanged for a new pair when the access token expires (single use).
    pub refresh_token: String,
    /// Unix time the access token expires, when known.
    #[serde(default)]
    pub expires: Option<i64>,
    #[serde(default)]
    /// The portal's unique id, as the OAuth server reports it.
    pub member_id: Option<String>,
    #[serde(default)]
    /// Scopes granted to the application.
    pub scope: Option<String>,
    #[serde(default)]
    /// The portal's REST endpoint, as the OAuth server reports it.
    pub client_endpoint: Option<String>,
    #[serde(default)]
    /// The portal user the tokens act as.
    pub user_id: Option<u64>,
    /// Unix time this pair was obtained.
    #[serde(default)]
    pub obtained_at: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("expires", &self.expires)
            .field("member_id", &self.member_id)
            .finish()
    }
}

impl TokenPair {
    /// A pair with nothing else known (no expiry, portal or scope), obtained now.
    pub fn new(access_token: impl Into<String>, refresh_token: impl Into<String>) -> TokenPair {
        TokenPair {
            access_token: access_token.into(),
            refresh_token: refresh_token.into(),
            expires: None,
            member_id: None,
            scope: None,
            client_endpoint: None,
            user_id: None,
            obtained_at: now_unix(),
        }
    }

    /// Parse the authorization server's token response (docs/protocol.md §3.4) or its error (§3.5).
    pub fn from_token_response(status: u16, body: &[u8]) -> Result<TokenPair, Error> {
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Err(match parse(body) {
                    Parsed::Garbage(m, _) => Error::auth_with(
                        format!("token endpoint answered HTTP {status} with {m}"),
                        e,
                    ),
                    _ => Error::auth_with(format!("token endpoint answered HTTP {status}"), e),
                });
            }
        };
        if let Some(code) = v.get("error").and_then(|e| e.as_str()) {
            let desc = v
                .get("error_description")
                .and_then(|e| e.as_str())
                .unwrap_or("");
            return Err(Error::Api(crate::ApiError {
                code: code.to_string(),
                description: desc.to_string(),
                http_status: status,
                method: "oauth/token".into(),
            }));
        }
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let access_token =
            s("access_token").ok_or_else(|| Error::auth("token response has no access_token"))?;
        let refresh_token =
            s("refresh_token").ok_or_else(|| Error::auth("token response has no refresh_token"))?;
        let now = now_unix();
        let expires = v
            .get("expires")
            .and_then(lenient_u64)
            .map(|x| x as i64)
            .or_else(|| {
                v.get("expires_in")
                    .and_then(lenient_u64)
                    .map(|x| now + x as i64)
            });
        let pair = TokenPair {
            access_token,
            refresh_token,
            expires,
            member_id: s("member_id"),
            scope: s("scope"),
            client_endpoint: s("client_endpoint"),
            user_id: v.get("user_id").and_then(lenient_u64),
            obtained_at: now,
        };
        // Known to the redactor from here on, whoever keeps the pair (see `held`).
        held::obtained(&pair);
        Ok(pair)
    }
}

/// An authentication error for a request to the token endpoint that got no answer. The URL is
/// stripped from the reqwest error before it is kept: its query holds the client secret and
/// the refresh token or the authorization code.
pub(crate) fn transport(what: &str, e: reqwest::Error) -> Error {
    let e = e.without_url();
    Error::auth_with(format!("{what}: {e}"), e)
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where the token pair lives: a 0600 file by default, PostgreSQL when a cluster shares it.
///
/// Futures are boxed so that the network store fits behind the same object as the file store.
pub trait TokenStore: Send + Sync {
    /// The stored pair, `None` when there is none yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenPair>, Error>>;
    /// Store `pair`, replacing the previous one.
    fn save<'a>(&'a self, pair: &'a TokenPair) -> BoxFuture<'a, Result<(), Error>>;
    /// An exclusive lock, across processes (and hosts, for a shared store), held while
    /// refreshing. Dropping the guard releases it.
    fn lock(&self) -> BoxFuture<'_, Result<Box<dyn Send>, Error>>;
    /// Forget the pair (logout).
    fn clear(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Where it is, for people (never contains a secret).
    fn describe(&self) -> String;
}

/// A JSON file (mode 0600) next to a `.lock` file.
#[derive(Debug, Clone)]
pub struct FileTokenStore {
    path: PathBuf,
}

impl FileTokenStore {
    /// A store at `path` (the file is created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> FileTokenStore {
        FileTokenStore { path: path.into() }
    }

    /// Where the pair is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::state(format!("{}: {e}", p.display()), e)
}

/// Create a directory (and parents) readable only by the owner.
pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    Ok(())
}

/// Write `bytes` to `path` atomically (temp file in the same dir, fsync, rename), mode 0600.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl FileTokenStore {
    /// Read the pair (blocking; the file is small).
    pub fn read(&self) -> Result<Option<TokenPair>, Error> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::state(
                    format!("{}: unreadable token file ({e})", self.path.display()),
                    e,
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }

    /// Write the pair atomically with mode 0600.
    pub fn write(&self, pair: &TokenPair) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(pair).map_err(|e| Error::state("token file", e))?;
        write_private_atomic(&self.path, &bytes)
    }

    /// Take the exclusive lock on `<file>.lock`, blocking until it is free.
    pub fn lock_blocking(&self) -> Result<std::fs::File, Error> {
        let (f, lock_path) = self.open_lock_file()?;
        f.lock().map_err(|e| io_err(&lock_path, e))?;
        Ok(f)
    }

    /// `<file>.lock`, opened (created 0600 when missing) but not locked.
    fn open_lock_file(&self) -> Result<(std::fs::File, PathBuf), Error> {
        let lock_path = self.path.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            ensure_private_dir(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&lock_path).map_err(|e| io_err(&lock_path, e))?;
        Ok((f, lock_path))
    }

    /// Delete the file (a missing file is fine).
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }
}

impl TokenStore for FileTokenStore {
    // File I/O (and the fsync of a save) runs on the blocking pool, not on the runtime.
    fn load(&self) -> BoxFuture<'_, Result<Option<TokenPair>, Error>> {
        let me = self.clone();
        Box::pin(blocking("token file read", move || me.read()))
    }

    fn save<'a>(&'a self, pair: &'a TokenPair) -> BoxFuture<'a, Result<(), Error>> {
        let me = self.clone();
        let pair = pair.clone();
        Box::pin(blocking("token file write", move || me.write(&pair)))
    }

    /// Bounded like the PostgreSQL token store's lock ([`crate::pg::TOKEN_LOCK_WAIT`]): a
    /// process that holds the lock file for ever (hung mid-refresh, stopped) fails this
    /// refresh with a state error instead of freezing every call waiting for it.
    fn lock(&self) -> BoxFuture<'_, Result<Box<dyn Send>, Error>> {
        let me = self.clone();
        Box::pin(async move {
            let (f, path) = blocking("token lock file", move || me.open_lock_file()).await?;
            if lock_file_within(&f, crate::pg::TOKEN_LOCK_WAIT)
                .await
                .map_err(|e| io_err(&path, e))?
            {
                Ok(Box::new(f) as Box<dyn Send>)
            } else {
                Err(Error::state(
                    format!(
                        "{}: another process has held the token refresh lock for over {}s; giving up",
                        path.display(),
                        crate::pg::TOKEN_LOCK_WAIT.as_secs()
                    ),
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ))
            }
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        let me = self.clone();
        Box::pin(blocking("token file removal", move || me.remove()))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Take the exclusive lock on `f` (a lock file), waiting at most `wait`: `Ok(false)` when
/// another holder kept it that long. Polled with `try_lock` and sleeps growing from 10 ms to
/// 250 ms, not a blocking `lock()`: that one cannot be given up, and holds a thread of the
/// blocking pool for as long as it waits. Lock files of refreshes use it (the token file here,
/// an installation's beside the SQLite registry), so that a hung holder fails a refresh
/// after a bound, as PostgreSQL's session locks do, instead of freezing it.
pub async fn lock_file_within(
    f: &std::fs::File,
    wait: std::time::Duration,
) -> Result<bool, std::io::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(250));
    }
}

/// Run blocking work (file or SQLite I/O) on tokio's blocking pool; a panic there becomes a
/// state error naming `what`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::state(what, e))?
}

/// OAuth credentials plus the current pair, with single-flight refresh.
pub struct OAuthSession {
    client_id: String,
    client_secret: SecretString,
    token_url: String,
    store: Arc<dyn TokenStore>,
    current: std::sync::RwLock<(u64, Option<TokenPair>)>,
    refresh_lock: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    refreshes: std::sync::atomic::AtomicU64,
    /// Its slot among the tokens the redactor knows ([`live_secrets`]).
    held: u64,
}

impl Drop for OAuthSession {
    fn drop(&mut self) {
        held::release(self.held);
    }
}

impl OAuthSession {
    /// `initial` comes from env/config; a stored pair that is newer wins (it was rotated since).
    pub async fn new(
        client_id: String,
        client_secret: SecretString,
        token_url: String,
        store: Arc<dyn TokenStore>,
        initial: Option<TokenPair>,
        http: reqwest::Client,
    ) -> Result<OAuthSession, Error> {
        let stored = store.load().await?;
        let pair = match (stored, initial) {
            (Some(s), Some(i)) => Some(if s.obtained_at >= i.obtained_at { s } else { i }),
            (s, i) => s.or(i),
        };
        // The pair in use may be a stored one the configuration never named: the redactor
        // must know it all the same.
        let held = held::new_session();
        if let Some(p) = &pair {
            held::hold(held, p);
        }
        Ok(OAuthSession {
            client_id,
            client_secret,
            token_url,
            store,
            current: std::sync::RwLock::new((0, pair)),
            refresh_lock: tokio::sync::Mutex::new(()),
            http,
            refreshes: std::sync::atomic::AtomicU64::new(0),
            held,
        })
    }

    /// The access token to use now and its generation.
    pub fn access(&self) -> Result<(u64, String), Error> {
        // One read lock for the whole decision: taking a second one while holding the first
        // can deadlock behind a writer that queued in between.
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        let has_refresh =
            g.1.as_ref()
                .map(|p| !p.refresh_token.is_empty())
                .unwrap_or(false);
        match &g.1 {
            Some(p) if !p.access_token.is_empty() => Ok((g.0, p.access_token.clone())),
            Some(_) | None if has_refresh => Ok((g.0, String::new())),
            _ => Err(Error::auth(
                "no OAuth access token: run `b24 auth login`, or set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN",
            )),
        }
    }

    /// How many refreshes this process performed.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current pair (for `auth status`).
    pub fn current(&self) -> Option<TokenPair> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Refresh because the token of generation `seen` was refused. Only one refresh happens
    /// however many callers arrive with the same `seen`; later callers get the new token.
    pub async fn refresh(&self, seen: u64) -> Result<(u64, String), Error> {
        let _one = self.refresh_lock.lock().await;
        {
            let g = self.current.read().unwrap_or_else(|p| p.into_inner());
            if g.0 != seen
                && let Some(p) = &g.1
            {
                return Ok((g.0, p.access_token.clone()));
            }
        }
        let refused = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let guard = self.store.lock().await?;
        // Another process may have rotated the pair while we waited for the lock.
        if let Some(stored) = self.store.load().await? {
            let rotated = match &refused {
                Some(r) => stored.access_token != r.access_token,
                None => true,
            };
            if rotated && !stored.access_token.is_empty() {
                drop(guard);
                return Ok(self.install(stored));
            }
        }
        let refresh_token = refused
            .as_ref()
            .map(|p| p.refresh_token.clone())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::auth(
                    "the access token expired and there is no refresh token: run `b24 auth login`",
                )
            })?;
        let resp = self
            .http
            .get(&self.token_url)
            .query(&[
                ("grant_type", "refresh_token"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
                ("refresh_token", refresh_token.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport("token refresh failed", e))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport("token refresh failed", e))?;
        let mut pair = TokenPair::from_token_response(status, &body).map_err(|e| match e {
            Error::Api(a) if a.code.eq_ignore_ascii_case("invalid_grant") => Error::auth_with(
                "the refresh token was refused (invalid_grant): it expired or was already used; run `b24 auth login`",
                Error::Api(a),
            ),
            other => other,
        })?;
        if pair.member_id.is_none() {
            pair.member_id = refused.as_ref().and_then(|p| p.member_id.clone());
        }
        self.store.save(&pair).await?;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(guard);
        Ok(self.install(pair))
    }

    /// Make `pair` the current one. Its tokens become known to the redactor before anyone
    /// can use (and log) them.
    fn install(&self, pair: TokenPair) -> (u64, String) {
        held::hold(self.held, &pair);
        let mut g = self.current.write().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let token = pair.access_token.clone();
        g.1 = Some(pair);
        (g.0, token)
    }

    /// Store a freshly obtained pair (after `auth login`).
    pub async fn adopt(&self, pair: TokenPair) -> Result<(), Error> {
        self.store.save(&pair).await?;
        self.install(pair);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_atomic() {
        let d = tempfile::tempdir().unwrap();
        let s = FileTokenStore::new(d.path().join("st/tokens.json"));
        assert!(s.read().unwrap().is_none());
        let p = TokenPair::from_token_response(
            200,
            br#"{"access_token":"a1","refresh_token":"r1","expires_in":3600,"member_id":"m"}"#,
        )
        .unwrap();
        s.write(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(s.read().unwrap().unwrap().access_token, "a1");
        assert!(!format!("{p:?}").contains("a1"));
        let _g = s.lock_blocking().unwrap();
    }

    #[test]
    fn oauth_server_errors_are_structured() {
        let e = TokenPair::from_token_response(
            400,
            br#"{"error":"invalid_grant","error_description":"x"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Api(ref a) if a.code == "invalid_grant"));
        assert!(TokenPair::from_token_response(502, b"<html>bad</html>").is_err());
    }
}
