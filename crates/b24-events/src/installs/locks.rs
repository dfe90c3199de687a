//! The per-portal locks of the installations registry: the refresh lock behind
//! [`InstallTokenStore`] and the pull lock of [`PullLock`]. Both are keyed by member id, so a
//! portal never waits for another.

use std::path::PathBuf;

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
    pub async fn try_lock_pull(&self, member_id: &str) -> Result<Option<PullLock>> {
        match &self.inbox {
            Inbox::Postgres(pool) => {
                let obj = pool.get().await.map_err(se)?;
                let row = obj
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtext('b24-pull:' || $1))",
                        &[&member_id],
                    )
                    .await
                    .map_err(se)?;
                Ok(row.get::<_, bool>(0).then(|| PullLock {
                    inner: Some(PullInner::Pg(Box::new(obj))),
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

/// The right to pull one portal's offline queue ([`Installations::try_lock_pull`]). Give it
/// back with [`PullLock::release`]; dropped without that, a PostgreSQL session is closed
/// rather than returned to the pool still holding the lock.
pub struct PullLock {
    inner: Option<PullInner>,
    member_id: String,
}

enum PullInner {
    Pg(Box<deadpool_postgres::Object>),
    File(#[allow(dead_code)] std::fs::File),
}

impl PullLock {
    pub async fn release(mut self) {
        if let Some(PullInner::Pg(obj)) = self.inner.take() {
            let unlocked = obj
                .query_one(
                    "SELECT pg_advisory_unlock(hashtext('b24-pull:' || $1))",
                    &[&self.member_id],
                )
                .await
                .is_ok_and(|r| r.get::<_, bool>(0));
            if !unlocked {
                drop(deadpool_postgres::Object::take(*obj));
            }
        }
    }
}

impl Drop for PullLock {
    fn drop(&mut self) {
        if let Some(PullInner::Pg(obj)) = self.inner.take() {
            drop(deadpool_postgres::Object::take(*obj));
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
    Pg(#[allow(dead_code)] deadpool_postgres::ClientWrapper),
    File(#[allow(dead_code)] std::fs::File),
}

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
                // A session of its own, taken out of the pool: the lock ends with it (on drop
                // the connection closes) and a pooled connection never goes back holding it.
                let obj = pool.get().await.map_err(se)?;
                let client = deadpool_postgres::Object::take(obj);
                client
                    .execute(
                        "SELECT pg_advisory_lock(hashtext('b24-install:' || $1))",
                        &[&self.member_id],
                    )
                    .await
                    .map_err(se)?;
                Ok(PortalLock::Pg(client))
            }
            Inbox::Sqlite { wal, .. } => {
                let path = lock_path(wal, &self.member_id);
                tokio::task::spawn_blocking(move || {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d)?;
                    }
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)?;
                    f.lock()?;
                    Ok::<_, std::io::Error>(PortalLock::File(f))
                })
                .await
                .map_err(se)?
                .map_err(se)
            }
        }
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
