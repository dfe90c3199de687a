//! The per-portal locks of the installations registry: the refresh lock behind
//! [`InstallTokenStore`] and the pull lock of [`PullLock`]. Both are keyed by member id, so a
//! portal never waits for another.

use std::path::PathBuf;
use std::sync::Arc;

use b24::auth::{TokenPair, TokenStore};
use futures::future::BoxFuture;
use sha2::Digest;

use super::{Installations, se};
use crate::inbox::Inbox;
use crate::{EventsError, Result};

impl Installations {
    /// Take the right to pull `member_id`'s offline queue, if nobody holds it: a PostgreSQL
    /// session advisory lock (hosts sharing the database exclude each other; a host that dies
    /// loses its session and the lock with it) or, on SQLite, a lock file. `None` = taken.
    ///
    /// On PostgreSQL every pull lock of this registry lives on one session of its own (taken
    /// out of the pool once), not on a pooled connection per lock: a round holding its lock
    /// needs pooled connections for its work (tokens, the queue), and locks that each held a
    /// pooled connection starved those rounds of connections as soon as as many portals were
    /// pulled at once as the pool had connections — every round then waited for the pool
    /// forever. Now the connections of a host are the pool's plus one, whatever the number of
    /// portals. If that session breaks, its locks go with it (another host may then pull a
    /// portal whose round is still running here; the event keys dedupe what both commit) and
    /// the next lock opens a new one.
    pub async fn try_lock_pull(&self, member_id: &str) -> Result<Option<PullLock>> {
        match &self.inbox {
            Inbox::Postgres(pool) => {
                let mut s = self.pull_session.lock().await;
                if s.held.contains(member_id) {
                    // Advisory locks nest within a session: a second holder here would get it.
                    return Ok(None);
                }
                let client = match s.client.take().filter(|c| !c.is_closed()) {
                    Some(c) => c,
                    None => {
                        let obj = pool.get().await.map_err(se)?;
                        s.generation += 1;
                        s.held.clear();
                        deadpool_postgres::Object::take(obj)
                    }
                };
                let got = tokio::time::timeout(
                    LOCK_QUERY_TIMEOUT,
                    client.query_one(
                        "SELECT pg_try_advisory_lock(hashtext('b24-pull:' || $1))",
                        &[&member_id],
                    ),
                )
                .await;
                let got = match got {
                    Ok(Ok(row)) => row.try_get::<_, bool>(0).map_err(se)?,
                    // The session is in doubt: drop it (and whatever it held) and fail this try.
                    Ok(Err(e)) => return Err(se(e)),
                    Err(_) => return Err(se("pull lock: no answer from PostgreSQL in time")),
                };
                s.client = Some(client);
                if !got {
                    return Ok(None);
                }
                s.held.insert(member_id.to_string());
                Ok(Some(PullLock {
                    inner: Some(PullInner::Pg {
                        session: self.pull_session.clone(),
                        generation: s.generation,
                    }),
                    member_id: member_id.to_string(),
                }))
            }
            Inbox::Sqlite { wal, .. } => {
                let path = lock_path(wal, &format!("pull:{member_id}"));
                let member = member_id.to_string();
                tokio::task::spawn_blocking(move || {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)?;
                    match f.try_lock() {
                        Ok(()) => Ok(Some(PullLock {
                            inner: Some(PullInner::File(f)),
                            member_id: member,
                        })),
                        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                        Err(std::fs::TryLockError::Error(e)) => Err(e),
                    }
                })
                .await
                .map_err(se)?
                .map_err(se)
            }
        }
    }

    /// The client's token store for one installed portal.
    pub fn token_store(&self, member_id: &str) -> InstallTokenStore {
        InstallTokenStore {
            reg: self.clone(),
            member_id: member_id.to_string(),
        }
    }
}

/// How long a lock or unlock may wait for PostgreSQL before the lock session is given up.
const LOCK_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The session holding a registry's pull locks, and which portals it holds.
#[derive(Default)]
pub(crate) struct LockSession {
    client: Option<deadpool_postgres::ClientWrapper>,
    /// Bumped with each new session: a lock of an older one ended with it.
    generation: u64,
    held: std::collections::HashSet<String>,
}

/// The right to pull one portal's offline queue ([`Installations::try_lock_pull`]). Give it
/// back with [`PullLock::release`]; dropped without that, it is given back by a task.
pub struct PullLock {
    inner: Option<PullInner>,
    member_id: String,
}

enum PullInner {
    Pg {
        session: Arc<tokio::sync::Mutex<LockSession>>,
        generation: u64,
    },
    File(#[allow(dead_code)] std::fs::File),
}

async fn unlock(session: &tokio::sync::Mutex<LockSession>, generation: u64, member_id: &str) {
    let mut s = session.lock().await;
    if s.generation != generation || !s.held.remove(member_id) {
        return; // that session is gone, and the lock with it
    }
    let Some(client) = s.client.as_ref() else {
        return;
    };
    let r = tokio::time::timeout(
        LOCK_QUERY_TIMEOUT,
        client.query_one(
            "SELECT pg_advisory_unlock(hashtext('b24-pull:' || $1))",
            &[&member_id],
        ),
    )
    .await;
    if !matches!(r, Ok(Ok(_))) {
        // Not known to be unlocked: end the session, which ends every lock it held.
        tracing::warn!(
            member_id,
            "pull unlock failed; closing the pull-lock session"
        );
        s.client = None;
        s.held.clear();
    }
}

impl PullLock {
    pub async fn release(mut self) {
        if let Some(PullInner::Pg {
            session,
            generation,
        }) = self.inner.take()
        {
            unlock(&session, generation, &self.member_id).await;
        }
    }
}

impl Drop for PullLock {
    fn drop(&mut self) {
        if let Some(PullInner::Pg {
            session,
            generation,
        }) = self.inner.take()
        {
            let member = std::mem::take(&mut self.member_id);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { unlock(&session, generation, &member).await });
            }
        }
    }
}

/// A portal's OAuth pair in the installations registry, as a [`TokenStore`].
#[derive(Clone)]
pub struct InstallTokenStore {
    reg: Installations,
    member_id: String,
}

/// Holds the per-portal lock: a dedicated PostgreSQL session (its advisory lock ends with it)
/// or a locked file.
enum PortalLock {
    Pg(#[allow(dead_code)] b24::pg::SessionLock),
    File(#[allow(dead_code)] std::fs::File),
}

/// How long a refresh waits for a lock session and then for the portal's lock (another
/// process refreshing the same portal) before it fails, rather than holding a connection for
/// as long as the other holder takes. The same bound on SQLite's lock file
/// ([`lock_file_within`]): a hung holder fails the refresh, it does not freeze it.
const REFRESH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

fn b24e(e: EventsError) -> b24::Error {
    b24::Error::state("installations store", e)
}

/// The lock file of one portal beside the SQLite database: a digest of the member id, so no
/// member id (it comes from a portal) can name a path.
fn lock_path(wal: &std::path::Path, member_id: &str) -> PathBuf {
    let db = wal.to_string_lossy();
    let db = db.strip_suffix("-wal").unwrap_or(&db);
    let digest = hex::encode(&sha2::Sha256::digest(member_id.as_bytes())[..12]);
    PathBuf::from(format!("{db}-portal-locks")).join(format!("{digest}.lock"))
}

impl InstallTokenStore {
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    async fn lock_portal(&self) -> Result<PortalLock> {
        match &self.reg.inbox {
            Inbox::Postgres(pool) => {
                // A session of its own, taken out of the pool once the lock is got: the lock
                // ends with it (on drop the connection closes) and a pooled connection never
                // goes back holding it. A refresh waiting for another host's lock holds
                // neither a connection nor one of the process's lock sessions while it waits,
                // and gives up after a bounded wait (`b24::pg::session_lock`).
                let key = format!("b24-install:{}", self.member_id);
                let lock =
                    b24::pg::session_lock(pool, &b24::pg::lock_sessions(), &key, REFRESH_LOCK_WAIT)
                        .await
                        .map_err(|e| EventsError::Store(e.to_string()))?;
                Ok(PortalLock::Pg(lock))
            }
            Inbox::Sqlite { wal, .. } => {
                let path = lock_path(wal, &self.member_id);
                let f = tokio::task::spawn_blocking(move || {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                })
                .await
                .map_err(se)?
                .map_err(se)?;
                lock_file_within(f, REFRESH_LOCK_WAIT, &self.member_id).await
            }
        }
    }
}

/// Take the lock on `f`, waiting at most `wait`, as PostgreSQL's path does: a process that
/// holds the file lock for ever (hung mid-refresh, stopped with SIGSTOP) must not hold every
/// refresh of that portal here for ever too ([`b24::auth::lock_file_within`] polls, where a
/// blocking `lock()` could not be given up). Past `wait`: a store error, which the token
/// store reports as `b24::Error::State`.
async fn lock_file_within(
    f: std::fs::File,
    wait: std::time::Duration,
    member_id: &str,
) -> Result<PortalLock> {
    if b24::auth::lock_file_within(&f, wait).await.map_err(se)? {
        Ok(PortalLock::File(f))
    } else {
        Err(EventsError::Store(format!(
            "portal {member_id}: another process has held its token refresh lock for over {}s; giving up",
            wait.as_secs()
        )))
    }
}

impl TokenStore for InstallTokenStore {
    fn load(&self) -> BoxFuture<'_, std::result::Result<Option<TokenPair>, b24::Error>> {
        Box::pin(async move {
            let row = self.reg.find(&self.member_id).await.map_err(b24e)?;
            Ok(row
                .filter(|r| r.member_id == self.member_id && r.is_installed())
                .and_then(|r| r.pair))
        })
    }

    fn save<'a>(
        &'a self,
        pair: &'a TokenPair,
    ) -> BoxFuture<'a, std::result::Result<(), b24::Error>> {
        Box::pin(async move {
            if self
                .reg
                .save_pair(&self.member_id, pair)
                .await
                .map_err(b24e)?
            {
                Ok(())
            } else {
                Err(b24::Error::auth(format!(
                    "portal {} is no longer installed: its tokens are gone",
                    self.member_id
                )))
            }
        })
    }

    fn lock(&self) -> BoxFuture<'_, std::result::Result<Box<dyn Send>, b24::Error>> {
        Box::pin(async move {
            let g = self.lock_portal().await.map_err(b24e)?;
            Ok(Box::new(g) as Box<dyn Send>)
        })
    }

    fn clear(&self) -> BoxFuture<'_, std::result::Result<(), b24::Error>> {
        Box::pin(async move {
            self.reg
                .end(&self.member_id, "removed")
                .await
                .map(|_| ())
                .map_err(b24e)
        })
    }

    fn describe(&self) -> String {
        format!("installation of portal {}", self.member_id)
    }
}
