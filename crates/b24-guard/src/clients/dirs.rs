//! The way to a client's policy file. Whoever can write a directory on that way can put another
//! file (or a symlink) at the policy's path, and whoever owns a symlink on it can point it
//! elsewhere, so the file's own mode is not enough.
//!
//! The path is walked one component at a time, the way the kernel would, without following
//! anything unchecked:
//!
//! - every directory passed through — as given and, after a symlink, as its target resolves —
//!   must be owned by this account or root, and not writable by group or others unless it is
//!   sticky (`/tmp`: there others cannot rename or remove what this account owns);
//! - every symlink followed, the file itself included, must be owned by this account or root:
//!   in a sticky directory the owner of a link may replace it at any time, so a link another
//!   account made there would let that account choose the client's policy. A link that passes
//!   is followed, and its target is checked the same way (its directories, further links, and
//!   finally the file); at most [`MAX_LINKS`] links are followed;
//! - the file at the end must be a regular file.
//!
//! The owner and mode of the file itself are checked on the open handle by the caller.

use std::path::{Component, Path, PathBuf};

use crate::GuardError;

/// How many symlinks a policy path may pass through (the kernel allows 40; a policy needs few).
pub(super) const MAX_LINKS: usize = 8;

/// The end of a checked walk: the path without symlinks, and the file's device and inode as
/// seen there (the open handle must be that file).
#[derive(Debug)]
pub(super) struct Resolved {
    pub path: PathBuf,
    #[cfg(unix)]
    pub dev_ino: (u64, u64),
}

/// Walk `path`, refusing anything on the way another account could have changed. A missing
/// component is reported as a missing policy file.
#[cfg(unix)]
pub(super) fn resolve(path: &Path, name: &str) -> Result<Resolved, GuardError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    let err = |reason: String| GuardError::PolicyFile {
        path: path.display().to_string(),
        reason,
    };
    let missing = || {
        err(format!(
            "the policy file of MCP client {name:?} is missing; its calls are refused"
        ))
    };
    let lstat = |p: &Path| {
        std::fs::symlink_metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing()
            } else {
                err(format!("{}: {e}", p.display()))
            }
        })
    };
    let me = nix::unistd::Uid::effective().as_raw();
    let trusted = |uid: u32| uid == me || uid == 0;
    let check_dir = |d: &Path, meta: &std::fs::Metadata| -> Result<(), GuardError> {
        if !trusted(meta.uid()) {
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
        Ok(())
    };
    // Components still to walk, front first; a symlink's target is put in front of the rest.
    let push_front = |queue: &mut VecDeque<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(s) => queue.push_front(s.to_os_string()),
                Component::ParentDir => queue.push_front(OsString::from("..")),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
    };
    let absolute = std::path::absolute(path).map_err(|e| err(e.to_string()))?;
    let mut queue = VecDeque::new();
    push_front(&mut queue, &absolute);
    let mut current = PathBuf::from("/");
    check_dir(&current, &lstat(&current)?)?;
    let mut links = 0usize;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            // `current` holds no symlink, so its parent is the real parent (already checked).
            current.pop();
            continue;
        }
        let next = current.join(&c);
        let meta = lstat(&next)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(err(format!(
                    "the path of the policy file of MCP client {name:?} passes through more than {MAX_LINKS} symlinks; its calls are refused"
                )));
            }
            if !trusted(meta.uid()) {
                return Err(err(format!(
                    "the symlink {} on the way to the policy file of MCP client {name:?} is owned by uid {}, not by this account or root; its owner could point it at another file, so the client's calls are refused",
                    next.display(),
                    meta.uid()
                )));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| err(format!("{}: {e}", next.display())))?;
            if target.has_root() {
                current = PathBuf::from("/");
            }
            push_front(&mut queue, &target);
        } else if kind.is_dir() {
            check_dir(&next, &meta)?;
            current = next;
        } else if !queue.is_empty() {
            return Err(err(format!("{} is not a directory", next.display())));
        } else {
            if !kind.is_file() {
                return Err(err(format!(
                    "the policy file of MCP client {name:?} is not a regular file; its calls are refused"
                )));
            }
            // In a directory others can write (sticky, as `/tmp`), another account can put a
            // hard link to any file of this account at the policy's path where the kernel
            // allows it (fs.protected_hardlinks = 0): owned by this account and not writable
            // by others, it would pass every check, and that account would choose which of
            // this account's files widens the client. Such a file must have one name only.
            if lstat(&current)?.mode() & 0o022 != 0 && meta.nlink() > 1 {
                return Err(err(format!(
                    "the policy file of MCP client {name:?} sits in a directory others can write ({}) and has {} hard links; another account may have linked it there, so its calls are refused (keep the policy in a directory only this account can write)",
                    current.display(),
                    meta.nlink()
                )));
            }
            return Ok(Resolved {
                path: next,
                dev_ino: (meta.dev(), meta.ino()),
            });
        }
    }
    // The path ended on a directory.
    Err(err(format!(
        "the policy file of MCP client {name:?} is not a regular file; its calls are refused"
    )))
}

#[cfg(not(unix))]
pub(super) fn resolve(path: &Path, _name: &str) -> Result<Resolved, GuardError> {
    Ok(Resolved {
        path: path.to_path_buf(),
    })
}
