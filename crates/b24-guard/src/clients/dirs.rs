//! The directories above a client's policy file. Whoever can write one of them can put another
//! file (or a symlink) at the policy's path, so the file's own mode is not enough: every
//! directory on the way — as given and as it resolves — must be owned by this account or
//! root, and not writable by group or others unless it is sticky (`/tmp`: there others cannot
//! rename or remove what this account owns).

use std::path::{Path, PathBuf};

use crate::GuardError;

/// Refuse `path` when a directory above it could be written by another account.
#[cfg(unix)]
pub(super) fn check(path: &Path, name: &str) -> Result<(), GuardError> {
    use std::os::unix::fs::MetadataExt;
    let err = |reason: String| GuardError::PolicyFile {
        path: path.display().to_string(),
        reason,
    };
    let absolute = std::path::absolute(path).map_err(|e| err(e.to_string()))?;
    let real = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in [&absolute, &real] {
        for d in p.ancestors().skip(1) {
            if !dirs.iter().any(|x| x == d) {
                dirs.push(d.to_path_buf());
            }
        }
    }
    let me = nix::unistd::Uid::effective().as_raw();
    for d in dirs {
        // Followed: a symlinked directory is judged by what it points to, and its own
        // directory is on the list too.
        let meta = std::fs::metadata(&d).map_err(|e| err(format!("{}: {e}", d.display())))?;
        if meta.uid() != me && meta.uid() != 0 {
            return Err(err(format!(
                "the directory {} above the policy file of MCP client {name:?} is owned by uid {}, not by this account or root; its owner could replace the file, so the client's calls are refused",
                d.display(),
                meta.uid()
            )));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(err(format!(
                "the directory {} above the policy file of MCP client {name:?} is writable by group or others (mode {:o}); anyone who can write it could replace the file and widen the client, so its calls are refused (chmod go-w)",
                d.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn check(_path: &Path, _name: &str) -> Result<(), GuardError> {
    Ok(())
}
