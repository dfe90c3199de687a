//! The guard's secret key: 32 random bytes in `<state dir>/guard.key` (mode 0600), created on
//! first use. Everything that must be tamper-evident is tagged with HMAC-SHA256 under a key
//! derived from it: the audit chain and its head, plan tags, the plan ledger, idempotency rows
//! and the digests of audited params.
//!
//! What this protects against: anyone who can edit the log, the head file or the state
//! database but cannot read the key (another tool, a careless edit, an agent told it may write
//! files but not read this one) cannot make a change that verifies, because a recomputed chain
//! or tag needs the key. What it does not protect against: whoever can read `guard.key` can
//! forge everything; whoever can replace the key, the head and the log together (or restore an
//! old copy of all of them) can roll back or restart history unnoticed. Ship records off the
//! host or note the head (`b24 audit verify` prints it) when that matters.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::GuardError;

type HmacSha256 = hmac::Hmac<sha256::Sha256>;

/// File name of the key inside the state dir.
pub const KEY_FILE: &str = "guard.key";

/// What a derived key is used for; each purpose gets its own key so a tag made for one thing
/// can never be passed off as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    AuditChain,
    AuditHead,
    ParamDigest,
    PlanTag,
    PlanLedger,
    Idempotency,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::AuditChain => b"b24 audit chain v2",
            Purpose::AuditHead => b"b24 audit head v2",
            Purpose::ParamDigest => b"b24 param digest v1",
            Purpose::PlanTag => b"b24 plan tag v1",
            Purpose::PlanLedger => b"b24 plan ledger v1",
            Purpose::Idempotency => b"b24 idempotency v1",
        }
    }
}

/// The loaded master key. `Debug` never shows it.
#[derive(Clone)]
pub struct GuardKey {
    master: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for GuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> GuardError {
    GuardError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl GuardKey {
    /// Load `<state_dir>/guard.key`, creating it (0600) when it does not exist. Two processes
    /// creating it at once agree on one key: the new key is written to a temporary file and
    /// linked into place, which fails for the loser, who then reads the winner's key.
    pub fn load_or_create(state_dir: &Path) -> Result<GuardKey, GuardError> {
        let path = state_dir.join(KEY_FILE);
        if let Some(k) = Self::load(&path)? {
            return Ok(k);
        }
        std::fs::create_dir_all(state_dir).map_err(|e| io_err(state_dir, e))?;
        let master: [u8; 32] = rand::random();
        let tmp = state_dir.join(format!(
            ".{KEY_FILE}.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(format!("{}\n", hex::encode(master)).as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(GuardKey { master, path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path)?
                .ok_or_else(|| io_err(&path, "the key vanished while it was being created")),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Load an existing key; `Ok(None)` when there is none (verification never creates one).
    pub fn load_existing(state_dir: &Path) -> Result<Option<GuardKey>, GuardError> {
        Self::load(&state_dir.join(KEY_FILE))
    }

    fn load(path: &Path) -> Result<Option<GuardKey>, GuardError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| io_err(path, "the guard key is not 64 hex digits (was it edited?)"))?;
        Ok(Some(GuardKey {
            master: bytes,
            path: path.to_path_buf(),
        }))
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn derived(&self, purpose: Purpose) -> HmacSha256 {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.master)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(purpose.label());
        let sub = m.finalize().into_bytes();
        <HmacSha256 as KeyInit>::new_from_slice(&sub)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so part boundaries are unambiguous) under
    /// the key for `purpose`, as lowercase hex.
    pub fn tag(&self, purpose: Purpose, parts: &[&[u8]]) -> String {
        let mut m = self.derived(purpose);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    pub fn check(&self, purpose: Purpose, parts: &[&[u8]], tag: &str) -> bool {
        let want = self.tag(purpose, parts);
        want.as_bytes().ct_eq(tag.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        assert!(GuardKey::load_existing(d.path()).unwrap().is_none());
        let a = GuardKey::load_or_create(d.path()).unwrap();
        let b = GuardKey::load_or_create(d.path()).unwrap();
        assert_eq!(
            a.tag(Purpose::PlanTag, &[b"x"]),
            b.tag(Purpose::PlanTag, &[b"x"])
        );
        assert_ne!(
            a.tag(Purpose::PlanTag, &[b"x"]),
            a.tag(Purpose::AuditChain, &[b"x"])
        );
        assert_ne!(
            a.tag(Purpose::PlanTag, &[b"ab", b"c"]),
            a.tag(Purpose::PlanTag, &[b"a", b"bc"])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{a:?}").contains(&hex::encode(a.master)));
        std::fs::write(a.path(), "nonsense").unwrap();
        assert!(GuardKey::load_existing(d.path()).is_err());
    }
}
