//! MCP clients over HTTP: bearer tokens the operator issues, each bound to its own policy file,
//! audit identity and write budget.
//!
//! `b24 mcp --http` can be reached by more than one agent, and "the operator's policy" is then
//! too coarse: one agent should only read, another may write deals. So each client gets a token
//! (`b24 mcp token add NAME --policy FILE`), and every request it makes is decided under the
//! operator's layers *plus* the token's file as one more caller layer — layers only narrow (see
//! [`crate::policy`]), so a token's file can never allow what the operator forbids. The audit
//! records name the client (never the token), and the hourly write budget is counted per client,
//! so one agent spending its budget does not starve another.
//!
//! Tokens are 256 random bits shown once at creation; only their SHA-256 is stored (in the
//! guard's `guard.db`, mode 0600, in the operator's guard dir — or, when the state store is
//! PostgreSQL, in its `b24_mcp_tokens` table, shared by every host of the cluster). A token is checked by hashing
//! what was presented and comparing it with every stored hash in constant time (no early exit,
//! no lookup keyed by the secret). Revoked tokens stay in the table (the name is not reusable,
//! so old audit records keep meaning one client) and never authenticate.

mod dirs;
mod pg;
mod sqlite;

use std::path::{Path, PathBuf};

use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::GuardError;
use crate::policy::{Layer, LayerKind, PolicyFile};
use crate::sources::Resolved;

/// What a token looks like before the secret part (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "b24mcp_";

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error(
        "invalid client name {0:?}: use 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or digit)"
    )]
    InvalidName(String),
    #[error("a client named {0:?} already exists (revoked names are not reused)")]
    Exists(String),
    #[error("no client named {0:?}")]
    NotFound(String),
    #[error("the client's policy file: {0}")]
    Policy(#[source] GuardError),
    #[error(transparent)]
    Store(#[from] GuardError),
}

/// A client that presented a valid, unrevoked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpClient {
    /// The name the operator gave (the audit identity).
    pub name: String,
    /// The client's policy file (read again for every call, so edits apply at once).
    pub policy: PathBuf,
}

impl McpClient {
    /// The client's policy as a caller layer. A file that is missing or does not parse is an
    /// error: every call of this client is refused until it is fixed (fail closed). So is a
    /// file someone other than the operator could have written (see [`read_client_policy`]).
    ///
    /// A client's file only narrows: `strict_params = false` in it is dropped (it would turn
    /// off MCP's default check for this client); the operator turns that off for the server.
    pub fn layer(&self) -> Result<Layer, GuardError> {
        let mut file = read_client_policy(&self.policy, &self.name)?;
        if file.strict_params == Some(false) {
            file.strict_params = None;
        }
        Layer::new(
            LayerKind::Caller,
            format!("MCP client {} ({})", self.name, self.policy.display()),
            file,
        )
    }

    /// Narrow a resolved policy by this client's layer.
    pub fn narrow(&self, resolved: &mut Resolved) -> Result<(), GuardError> {
        resolved.policy.layers.push(self.layer()?);
        Ok(())
    }
}

/// The most a client's policy file may hold (a policy is a few lines).
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Read a client's policy file, refusing what the operator cannot have meant: something that
/// is not a regular file (a FIFO would block the server on every call of the client, a device
/// would never end), a file larger than `MAX_POLICY_BYTES` (1 MiB), and — on Unix — a file that
/// another account could have written (owned by neither the account serving MCP nor root, or
/// writable by group or others), that sits below a directory another account could write, or
/// that is reached through a symlink another account owns (a link in `/tmp` is its owner's to
/// repoint). A symlink this account or root owns is followed, and its target must pass the same
/// checks (see `dirs`). Whoever can change any of these decides what the client may do.
/// The path is walked and checked first; the file at its end is then opened (non-blocking,
/// not following a symlink) and must be the very file the walk found, and its owner and mode
/// are checked on the open handle.
pub fn read_client_policy(path: &Path, name: &str) -> Result<PolicyFile, GuardError> {
    use std::io::Read;
    let err = |reason: String| GuardError::PolicyFile {
        path: path.display().to_string(),
        reason,
    };
    let resolved = dirs::resolve(path, name)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let file = match opts.open(&resolved.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(format!(
                "the policy file of MCP client {name:?} is missing; its calls are refused"
            )));
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err(format!(
            "the policy file of MCP client {name:?} is not a regular file; its calls are refused"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (meta.dev(), meta.ino()) != resolved.dev_ino {
            return Err(err(format!(
                "the policy file of MCP client {name:?} changed while it was read; its calls are refused"
            )));
        }
        let me = nix::unistd::Uid::effective().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(err(format!(
                "the policy file of MCP client {name:?} is owned by uid {}, not by this account or root; whoever owns it could widen the client, so its calls are refused",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(err(format!(
                "the policy file of MCP client {name:?} is writable by group or others (mode {:o}); anyone who can write it could widen the client, so its calls are refused (chmod go-w)",
                meta.mode() & 0o7777
            )));
        }
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(err(format!(
            "the policy file of MCP client {name:?} is larger than {MAX_POLICY_BYTES} bytes"
        )));
    }
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(err(format!(
            "the policy file of MCP client {name:?} is larger than {MAX_POLICY_BYTES} bytes"
        )));
    }
    PolicyFile::parse(&text, path)
}

/// One row of `b24 mcp token list` (never the token or its hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub policy: PathBuf,
    pub created_at: f64,
    pub revoked_at: Option<f64>,
}

/// A freshly issued token: the only time the secret exists outside the client.
#[derive(Debug)]
pub struct Issued {
    pub name: String,
    pub token: String,
}

/// Whether `name` is a valid client name.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn hash_hex(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A stored client, as both backends read it.
struct Row {
    name: String,
    hash: String,
    policy: String,
    created_at: f64,
    revoked_at: Option<f64>,
}

enum Backend {
    Sqlite(sqlite::SqliteTokens),
    Postgres(pg::PgTokens),
}

/// The token table: in the guard's `guard.db`, or — when the state store is PostgreSQL
/// (`B24_STORE_URL=postgres://…`) — in that database, so every host of a cluster shares the
/// tokens and their revocation.
pub struct TokenStore {
    backend: Backend,
}

impl TokenStore {
    /// Open (creating) the table in `guard_dir/guard.db` (the directory and file private).
    pub fn open(guard_dir: &Path) -> Result<TokenStore, GuardError> {
        Ok(TokenStore {
            backend: Backend::Sqlite(sqlite::SqliteTokens::open(guard_dir)?),
        })
    }

    /// Open (creating) the table in the PostgreSQL database at `url`.
    pub async fn open_postgres(url: &str) -> Result<TokenStore, GuardError> {
        Ok(TokenStore {
            backend: Backend::Postgres(pg::PgTokens::connect(url).await?),
        })
    }

    /// The store the state store's URL picks: PostgreSQL for `postgres://…` (shared by the
    /// cluster), otherwise `guard_dir/guard.db` (a SQLite `B24_STORE_URL` names the event
    /// queue's file; the tokens stay with the guard's records). A URL with an unknown scheme is
    /// an error, never a quiet fall-back to local tokens another host cannot revoke.
    pub async fn open_for(
        guard_dir: &Path,
        store_url: Option<&str>,
    ) -> Result<TokenStore, GuardError> {
        match store_url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => {
                match b24::config::store_kind(u).map_err(|e| GuardError::Store(e.to_string()))? {
                    b24::config::StoreKind::Postgres => Self::open_postgres(u).await,
                    b24::config::StoreKind::Sqlite => Self::open(guard_dir),
                    // A kind this b24 does not know how to share tokens in: not local tokens.
                    other => Err(GuardError::Store(format!(
                        "the client tokens cannot be kept in a {other:?} store"
                    ))),
                }
            }
            None => Self::open(guard_dir),
        }
    }

    /// Whether the tokens live in the shared PostgreSQL database.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    async fn rows(&self) -> Result<Vec<Row>, GuardError> {
        match &self.backend {
            Backend::Sqlite(s) => s.rows().await,
            Backend::Postgres(p) => p.rows().await,
        }
    }

    /// Issue a token for a new client. The policy file must exist and parse now (it is read
    /// again at every call); its absolute path is stored.
    pub async fn add(&self, name: &str, policy: &Path) -> Result<Issued, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::InvalidName(name.to_string()));
        }
        let policy = std::path::absolute(policy).map_err(|e| {
            TokenError::Policy(GuardError::Io {
                path: policy.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        let client = McpClient {
            name: name.to_string(),
            policy: policy.clone(),
        };
        client.layer().map_err(TokenError::Policy)?;
        let secret: [u8; 32] = rand::random();
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let (hash, policy, at) = (
            hash_hex(&token),
            policy.display().to_string(),
            crate::store::now(),
        );
        let inserted = match &self.backend {
            Backend::Sqlite(s) => s.insert(name, &hash, &policy, at).await?,
            Backend::Postgres(p) => p.insert(name, &hash, &policy, at).await?,
        };
        if !inserted {
            return Err(TokenError::Exists(name.to_string()));
        }
        Ok(Issued {
            name: name.to_string(),
            token,
        })
    }

    /// Every client, revoked ones included, by name.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, GuardError> {
        Ok(self
            .rows()
            .await?
            .into_iter()
            .map(|r| TokenInfo {
                name: r.name,
                policy: PathBuf::from(r.policy),
                created_at: r.created_at,
                revoked_at: r.revoked_at,
            })
            .collect())
    }

    /// Revoke a client's token; `Ok(false)` when it already was. Takes effect at the next
    /// request (every request is authenticated again), on every host sharing the store.
    ///
    /// Names are issued in lower case only, so the name is matched case-insensitively (and
    /// trimmed): `revoke READER` revokes `reader` rather than leaving its token working.
    pub async fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let name = name.trim().to_ascii_lowercase();
        let at = crate::store::now();
        let done = match &self.backend {
            Backend::Sqlite(s) => s.revoke(&name, at).await?,
            Backend::Postgres(p) => p.revoke(&name, at).await?,
        };
        done.ok_or(TokenError::NotFound(name))
    }

    /// The client a presented token belongs to, if it is valid and not revoked. Every stored
    /// hash is compared (constant time each), whatever matched earlier. A store that cannot be
    /// read is an error (the request is refused), never "no such token" cached from before.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<McpClient>, GuardError> {
        let want = sha2::Sha256::digest(presented.as_bytes());
        let mut found = None;
        for row in self.rows().await? {
            let stored = hex::decode(&row.hash).unwrap_or_default();
            let equal: bool = stored.as_slice().ct_eq(want.as_slice()).into();
            if equal && row.revoked_at.is_none() && found.is_none() {
                found = Some(McpClient {
                    name: row.name,
                    policy: PathBuf::from(row.policy),
                });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "crm-bot", "agent_2", "x.y", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn issue_authenticate_revoke() {
        let t = tempfile::tempdir().unwrap();
        let pol = t.path().join("ro.toml");
        std::fs::write(&pol, "read_only = true\n").unwrap();
        let s = TokenStore::open(&t.path().join("guard")).unwrap();
        let a = s.add("reader", &pol).await.unwrap();
        assert!(a.token.starts_with(TOKEN_PREFIX) && a.token.len() == TOKEN_PREFIX.len() + 64);
        let b = s.add("writer", &pol).await.unwrap();
        assert_ne!(a.token, b.token);
        assert!(matches!(
            s.add("reader", &pol).await,
            Err(TokenError::Exists(_))
        ));
        assert!(matches!(
            s.add("Bad Name", &pol).await,
            Err(TokenError::InvalidName(_))
        ));
        assert!(matches!(
            s.add("nopolicy", &t.path().join("missing.toml")).await,
            Err(TokenError::Policy(_))
        ));
        let c = s.authenticate(&a.token).await.unwrap().unwrap();
        assert_eq!(c.name, "reader");
        assert_eq!(
            s.authenticate(&b.token).await.unwrap().unwrap().name,
            "writer"
        );
        assert!(s.authenticate("").await.unwrap().is_none());
        assert!(
            s.authenticate(&format!("{}x", a.token))
                .await
                .unwrap()
                .is_none()
        );
        // The secret is not stored.
        let raw = std::fs::read(t.path().join("guard/guard.db")).unwrap();
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains(&a.token[TOKEN_PREFIX.len()..]));
        // Another spelling of the name revokes the same client.
        assert!(s.revoke(" READER ").await.unwrap());
        assert!(!s.revoke("reader").await.unwrap());
        assert!(matches!(
            s.revoke("nobody").await,
            Err(TokenError::NotFound(_))
        ));
        assert!(s.authenticate(&a.token).await.unwrap().is_none());
        assert!(s.authenticate(&b.token).await.unwrap().is_some());
        let l = s.list().await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].revoked_at.is_some() && l[1].revoked_at.is_none());
        // A revoked name is not reissued.
        assert!(matches!(
            s.add("reader", &pol).await,
            Err(TokenError::Exists(_))
        ));
    }

    #[test]
    fn a_clients_layer_only_narrows_and_a_missing_file_fails_closed() {
        let t = tempfile::tempdir().unwrap();
        let pol = t.path().join("p.toml");
        std::fs::write(&pol, "read_only = true\nguard_dir = \"/tmp/elsewhere\"\n").unwrap();
        let c = McpClient {
            name: "r".into(),
            policy: pol.clone(),
        };
        let l = c.layer().unwrap();
        assert_eq!(l.kind, LayerKind::Caller);
        // A caller layer cannot move the guard's records.
        assert!(l.rules.guard_dir.is_none() && l.rules.read_only);
        // Nor turn MCP's strict parameter check off for itself; it may turn it on.
        std::fs::write(&pol, "strict_params = false\n").unwrap();
        assert_eq!(c.layer().unwrap().rules.strict_params, None);
        std::fs::write(&pol, "strict_params = true\n").unwrap();
        assert_eq!(c.layer().unwrap().rules.strict_params, Some(true));
        std::fs::remove_file(&pol).unwrap();
        assert!(c.layer().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_policy_file_others_could_write_or_that_never_ends_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let pol = t.path().join("p.toml");
        let c = McpClient {
            name: "r".into(),
            policy: pol.clone(),
        };
        std::fs::write(&pol, "read_only = true\n").unwrap();
        std::fs::set_permissions(&pol, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(c.layer().is_ok());
        for mode in [0o666, 0o664, 0o646] {
            std::fs::set_permissions(&pol, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = c.layer().unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{mode:o}: {e}");
        }
        // A directory, a FIFO (would block a worker thread forever) and /dev/zero (never ends).
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let fifo = t.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        let mut paths = vec![dir, std::path::PathBuf::from("/dev/zero")];
        if made.is_ok_and(|s| s.success()) {
            paths.push(fifo);
        }
        for p in paths {
            let c = McpClient {
                name: "r".into(),
                policy: p.clone(),
            };
            let e = c.layer().unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{}: {e}", p.display());
        }
        // Larger than any policy.
        let big = t.path().join("big.toml");
        std::fs::write(
            &big,
            format!("read_only = true\n#{}\n", "x".repeat(2 << 20)),
        )
        .unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = McpClient {
            name: "r".into(),
            policy: big,
        };
        assert!(c.layer().unwrap_err().to_string().contains("larger than"));
    }
}
