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
        }),
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec(&c)?).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok((tmp, cp))
}
