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
//! guard's `guard.db`, mode 0600, in the operator's guard dir). A token is checked by hashing
//! what was presented and comparing it with every stored hash in constant time (no early exit,
//! no lookup keyed by the secret). Revoked tokens stay in the table (the name is not reusable,
//! so old audit records keep meaning one client) and never authenticate.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::GuardError;
use crate::policy::{Layer, LayerKind, PolicyFile};
use crate::sources::Resolved;

/// What a token looks like before the secret part (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "b24mcp_";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mcp_tokens (name TEXT PRIMARY KEY, hash TEXT NOT NULL, policy TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL);
";

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
/// would never end), a file larger than [`MAX_POLICY_BYTES`], and — on Unix — a file that
/// another account could have written (owned by neither the account serving MCP nor root, or
/// writable by group or others), because whoever can write it decides what the client may do.
/// The file is opened once (non-blocking) and checked on the open handle, so swapping the path
/// between the check and the read changes nothing.
pub fn read_client_policy(path: &Path, name: &str) -> Result<PolicyFile, GuardError> {
    use std::io::Read;
    let err = |reason: String| GuardError::PolicyFile {
        path: path.display().to_string(),
        reason,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = match opts.open(path) {
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

fn db_err(e: rusqlite::Error) -> GuardError {
    GuardError::Store(e.to_string())
}

/// The token table in the guard's `guard.db`.
pub struct TokenStore {
    conn: Mutex<rusqlite::Connection>,
}

impl TokenStore {
    /// Open (creating) the table in `guard_dir/guard.db` (the directory and file private).
    pub fn open(guard_dir: &Path) -> Result<TokenStore, GuardError> {
        b24::auth::ensure_private_dir(guard_dir).map_err(|e| GuardError::Io {
            path: guard_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let path = guard_dir.join("guard.db");
        let conn = rusqlite::Connection::open(&path).map_err(db_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(TokenStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issue a token for a new client. The policy file must exist and parse now (it is read
    /// again at every call); its absolute path is stored.
    pub fn add(&self, name: &str, policy: &Path) -> Result<Issued, TokenError> {
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
        let conn = self.conn();
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO mcp_tokens (name, hash, policy, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    name,
                    hash_hex(&token),
                    policy.display().to_string(),
                    crate::store::now()
                ],
            )
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(TokenError::Exists(name.to_string()));
        }
        Ok(Issued {
            name: name.to_string(),
            token,
        })
    }

    /// Every client, revoked ones included, by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>, GuardError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name, policy, created_at, revoked_at FROM mcp_tokens ORDER BY name")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenInfo {
                    name: r.get(0)?,
                    policy: PathBuf::from(r.get::<_, String>(1)?),
                    created_at: r.get(2)?,
                    revoked_at: r.get(3)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Revoke a client's token; `Ok(false)` when it already was. Takes effect at the next
    /// request (every request is authenticated again).
    ///
    /// Names are issued in lower case only, so the name is matched case-insensitively (and
    /// trimmed): `revoke READER` revokes `reader` rather than leaving its token working.
    pub fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.as_str();
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE mcp_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                rusqlite::params![name, crate::store::now()],
            )
            .map_err(db_err)?;
        if changed == 1 {
            return Ok(true);
        }
        let exists: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM mcp_tokens WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if exists == 0 {
            return Err(TokenError::NotFound(name.to_string()));
        }
        Ok(false)
    }

    /// The client a presented token belongs to, if it is valid and not revoked. Every stored
    /// hash is compared (constant time each), whatever matched earlier.
    pub fn authenticate(&self, presented: &str) -> Result<Option<McpClient>, GuardError> {
        let want = sha2::Sha256::digest(presented.as_bytes());
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name, hash, policy, revoked_at IS NOT NULL FROM mcp_tokens")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(db_err)?;
        let mut found = None;
        for row in rows {
            let (name, hash, policy, revoked) = row.map_err(db_err)?;
            let stored = hex::decode(&hash).unwrap_or_default();
            let equal: bool = stored.as_slice().ct_eq(want.as_slice()).into();
            if equal && !revoked && found.is_none() {
                found = Some(McpClient {
                    name,
                    policy: PathBuf::from(policy),
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

    #[test]
    fn issue_authenticate_revoke() {
        let t = tempfile::tempdir().unwrap();
        let pol = t.path().join("ro.toml");
        std::fs::write(&pol, "read_only = true\n").unwrap();
        let s = TokenStore::open(&t.path().join("guard")).unwrap();
        let a = s.add("reader", &pol).unwrap();
        assert!(a.token.starts_with(TOKEN_PREFIX) && a.token.len() == TOKEN_PREFIX.len() + 64);
        let b = s.add("writer", &pol).unwrap();
        assert_ne!(a.token, b.token);
        assert!(matches!(s.add("reader", &pol), Err(TokenError::Exists(_))));
        assert!(matches!(
            s.add("Bad Name", &pol),
            Err(TokenError::InvalidName(_))
        ));
        assert!(matches!(
            s.add("nopolicy", &t.path().join("missing.toml")),
            Err(TokenError::Policy(_))
        ));
        let c = s.authenticate(&a.token).unwrap().unwrap();
        assert_eq!(c.name, "reader");
        assert_eq!(s.authenticate(&b.token).unwrap().unwrap().name, "writer");
        assert!(s.authenticate("").unwrap().is_none());
        assert!(s.authenticate(&format!("{}x", a.token)).unwrap().is_none());
        // The secret is not stored.
        let raw = std::fs::read(t.path().join("guard/guard.db")).unwrap();
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains(&a.token[TOKEN_PREFIX.len()..]));
        // Another spelling of the name revokes the same client.
        assert!(s.revoke(" READER ").unwrap());
        assert!(!s.revoke("reader").unwrap());
        assert!(matches!(s.revoke("nobody"), Err(TokenError::NotFound(_))));
        assert!(s.authenticate(&a.token).unwrap().is_none());
        assert!(s.authenticate(&b.token).unwrap().is_some());
        let l = s.list().unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].revoked_at.is_some() && l[1].revoked_at.is_none());
        // A revoked name is not reissued.
        assert!(matches!(s.add("reader", &pol), Err(TokenError::Exists(_))));
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
