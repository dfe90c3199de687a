//! The export's checkpoint file and its `--out` file: written so that they agree after a kill
//! at any moment (see the parent module for the order of writes).

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use b24::export::Progress;

use crate::exit::{self, Exit};
use crate::render::{Format, Records};

/// The checkpoint file: the library's [`Progress`] plus, for `--out`, where the output stands
/// (the file's length when the progress was recorded, and the csv columns already written).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputState>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct OutputState {
    /// The `--out` file (`None`: stdout).
    pub file: Option<PathBuf>,
    /// The file's length that goes with this progress.
    pub bytes: u64,
    pub format: Format,
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// SHA-256 of the file's first `bytes` bytes: a resume refuses a file edited or replaced
    /// since (its length alone would let another file of at least that size be cut and
    /// continued, mixing the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The digest of what has been written to `--out`, kept as the export goes.
pub(super) type OutDigest = sha2::Sha256;

pub(super) fn digest_hex(d: &OutDigest) -> String {
    use sha2::Digest;
    hex::encode(d.clone().finalize())
}

/// Before a resume: the digest of the file's first `o.bytes` bytes, refused when the
/// checkpoint recorded another (the file was edited or replaced since). A missing or shorter
/// file is left to [`open_out`], which says so.
pub(super) fn verify_prefix(path: &Path, o: &OutputState) -> anyhow::Result<OutDigest> {
    use sha2::Digest;
    use std::io::Read;
    let mut d = OutDigest::new();
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(d);
    };
    let mut r = std::io::BufReader::new(f).take(o.bytes);
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r
            .read(&mut buf)
            .map_err(|e| Exit::new(exit::USAGE, format!("--out {}: {e}", path.display())))?;
        if k == 0 {
            break;
        }
        d.update(&buf[..k]);
        n += k as u64;
    }
    if n == o.bytes
        && let Some(want) = &o.sha256
        && *want != digest_hex(&d)
    {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "--out {}: its first {} bytes are not what this export wrote (edited or replaced since); remove the checkpoint to start over",
                path.display(),
                o.bytes
            ),
        ));
    }
    Ok(d)
}

pub(super) fn state_err(msg: String) -> anyhow::Error {
    Exit::new(exit::INTERNAL, msg)
}

pub(super) fn load_checkpoint(cp: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read(cp) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Exit::new(
                exit::USAGE,
                format!("checkpoint {} is not valid: {e}", cp.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(format!(
            "cannot read checkpoint {}: {e}",
            cp.display()
        ))),
    }
}

/// Write the checkpoint next to `cp`, fsync it, rename it over `cp`, fsync the directory.
pub(super) fn save_checkpoint(cp: &Path, c: &Checkpoint) -> anyhow::Result<()> {
    let io =
        |e: std::io::Error| state_err(format!("cannot write checkpoint {}: {e}", cp.display()));
    let mut name = cp.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = cp.with_file_name(name);
    let body = serde_json::to_vec(c)?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, cp).map_err(io)?;
    let dir = match cp.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The output file, opened for a fresh export (truncated) or a resumed one (cut back to the
/// length the checkpoint recorded).
pub(super) fn open_out(path: &Path, resume_at: Option<u64>) -> anyhow::Result<std::fs::File> {
    let io = |e: std::io::Error| Exit::new(exit::USAGE, format!("--out {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(resume_at.is_none())
        .open(path)
        .map_err(io)?;
    if let Some(at) = resume_at {
        let len = f.metadata().map_err(io)?.len();
        if len < at {
            return Err(Exit::new(
                exit::USAGE,
                format!(
                    "--out {}: the file has {len} bytes but its checkpoint recorded {at}: it was changed since; remove the checkpoint to start over",
                    path.display()
                ),
            ));
        }
        f.set_len(at).map_err(io)?;
        f.sync_all().map_err(io)?;
        f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    }
    Ok(f)
}

/// To stdout: the checkpoint written to `CP.tmp` and fsynced, not yet visible.
pub(super) fn prepare_stdout_checkpoint<'a>(
    cp: &'a Path,
    progress: &Progress,
    format: Format,
    records: &Records<Vec<u8>>,
) -> anyhow::Result<(PathBuf, &'a Path)> {
    let io =
        |e: std::io::Error| state_err(format!("cannot write checkpoint {}: {e}", cp.display()));
    let mut name = cp.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = cp.with_file_name(name);
    let c = Checkpoint {
        progress: progress.clone(),
        output: records.columns().map(|c| OutputState {
            file: None,
            bytes: 0,
            format,
            columns: Some(c.to_vec()),
            sha256: None,
        }),
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec(&c)?).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok((tmp, cp))
}

/// Refuse an `--out` that would overwrite the export's own checkpoint or one of b24's records
/// (the audit log, its head, the guard key and store, the limiter — anything in `protected`
/// directories), however it is reached: the same path, a symlink, or a hard link. Truncating
/// the checkpoint loses the export while reporting it done; truncating the audit log destroys
/// the records `b24 audit verify` and `b24 settle` depend on.
pub(super) fn refuse_clobbering(
    flag: &str,
    out: &Path,
    checkpoint: Option<&Path>,
    protected: &[PathBuf],
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |what: String| {
        Err(Exit::new(
            exit::USAGE,
            format!(
                "{flag} {}: {what}; write the export somewhere else",
                out.display()
            ),
        ))
    };
    // Where the file really is: the target of a symlink (also one whose target does not
    // exist yet: open() would create it there).
    let mut real = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    for _ in 0..40 {
        match std::fs::read_link(&real) {
            Ok(t) => {
                real = match real.parent() {
                    Some(p) => p.join(t),
                    None => t,
                }
            }
            Err(_) => break,
        }
    }
    let canon = |p: &Path| -> PathBuf {
        if let Ok(c) = std::fs::canonicalize(p) {
            return c;
        }
        match (p.parent(), p.file_name()) {
            (Some(d), Some(n)) => std::fs::canonicalize(d)
                .map(|d| d.join(n))
                .unwrap_or_else(|_| p.to_path_buf()),
            _ => p.to_path_buf(),
        }
    };
    let real = canon(&real);
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let out_id = id(&real);
    if let Some(cp) = checkpoint {
        let mut tmp = cp.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        tmp.push(".tmp");
        for c in [cp.to_path_buf(), cp.with_file_name(tmp)] {
            if canon(&c) == real || (out_id.is_some() && id(&c) == out_id) {
                return refuse(format!(
                    "it is the checkpoint file {} (the checkpoint would replace the items)",
                    cp.display()
                ));
            }
        }
    }
    for dir in protected {
        let d = canon(dir);
        if real.starts_with(&d) {
            return refuse(format!("it is inside b24's own records ({})", d.display()));
        }
        let Some(oid) = out_id else { continue };
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if id(&e.path()) == Some(oid) {
                    return refuse(format!(
                        "it is b24's own {} (another name for the same file)",
                        e.path().display()
                    ));
                }
            }
        }
    }
    Ok(())
}
