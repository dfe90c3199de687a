//! A client's policy file reached through symlinks, or owned by another account: the way to the
//! file is walked link by link, and a link (the file itself or a directory on the way) that
//! another account owns is refused — in a sticky directory like `/tmp` that account could point
//! it at any file it likes at any time. A link this account or root owns is followed, and its
//! target must pass the same checks. Tests that need another account's files run as root only
//! (they `lchown` to uid 65534).

#![cfg(unix)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use b24_guard::clients::McpClient;

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn client(p: &Path) -> McpClient {
    McpClient {
        name: "linked".into(),
        policy: p.to_path_buf(),
    }
}

/// A private directory with a sticky, world-writable one inside (a private `/tmp`), and the
/// operator's real policy (read-only) plus a wide one an attacker would like to point at.
struct Setup {
    _t: tempfile::TempDir,
    sticky: PathBuf,
    narrow: PathBuf,
    wide: PathBuf,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    mode(t.path(), 0o755);
    let sticky = t.path().join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    mode(&sticky, 0o1777);
    let own = t.path().join("etc");
    std::fs::create_dir(&own).unwrap();
    mode(&own, 0o755);
    let narrow = own.join("narrow.toml");
    std::fs::write(&narrow, "read_only = true\n").unwrap();
    mode(&narrow, 0o644);
    // This account's and not writable by others: it passes every check of a file on its own.
    let wide = own.join("wide.toml");
    std::fs::write(&wide, "allow = [\"*\"]\n").unwrap();
    mode(&wide, 0o644);
    Setup {
        _t: t,
        sticky,
        narrow,
        wide,
    }
}

/// The attack of the finding: in a sticky, world-writable directory another account makes the
/// policy path a symlink to a file that passes every check on its own. Refused, naming the link.
#[test]
fn a_symlink_another_account_owns_is_refused_even_to_a_good_file() {
    if !is_root() {
        eprintln!("skipped: needs root to make a symlink owned by another account");
        return;
    }
    let s = setup();
    let link = s.sticky.join("client.toml");
    symlink(&s.wide, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let e = client(&link).layer().unwrap_err().to_string();
    assert!(
        e.contains("symlink") && e.contains("owned by uid 65534"),
        "{e}"
    );
    // The same through a symlinked directory another account owns.
    let dir_link = s.sticky.join("clients");
    symlink(s.wide.parent().unwrap(), &dir_link).unwrap();
    std::os::unix::fs::lchown(&dir_link, Some(65534), Some(65534)).unwrap();
    let e = client(&dir_link.join("narrow.toml"))
        .layer()
        .unwrap_err()
        .to_string();
    assert!(e.contains("symlink") && e.contains("uid 65534"), "{e}");
    // A chain: our link to their link.
    let ours = s.sticky.join("ours.toml");
    symlink(&link, &ours).unwrap();
    let e = client(&ours).layer().unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
    // The plain file itself owned by another account, in the sticky directory.
    let theirs = s.sticky.join("theirs.toml");
    std::fs::write(&theirs, "allow = [\"*\"]\n").unwrap();
    mode(&theirs, 0o644);
    std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
    let e = client(&theirs).layer().unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
}

/// A symlink this account owns is followed, and its target must pass the same checks: a good
/// target is read; a target writable by others, in a directory others can write, or that is
/// not a regular file is refused; a loop or a long chain ends with an error, not a hang.
#[test]
fn an_own_symlink_is_followed_and_its_target_checked_the_same_way() {
    let s = setup();
    let link = s.sticky.join("client.toml");
    symlink(&s.narrow, &link).unwrap();
    let l = client(&link).layer().unwrap();
    assert!(l.rules.read_only);
    // A relative link, through `..`.
    let rel = s.sticky.join("rel.toml");
    symlink("../etc/narrow.toml", &rel).unwrap();
    assert!(client(&rel).layer().unwrap().rules.read_only);
    // The target made writable by others.
    mode(&s.narrow, 0o666);
    let e = client(&link).layer().unwrap_err().to_string();
    assert!(e.contains("writable by group or others"), "{e}");
    mode(&s.narrow, 0o644);
    // The target's directory made writable by others (not sticky).
    let dir = s.narrow.parent().unwrap();
    mode(dir, 0o777);
    let e = client(&link).layer().unwrap_err().to_string();
    assert!(
        e.contains("writable by group or others") && e.contains("etc"),
        "{e}"
    );
    mode(dir, 0o755);
    assert!(client(&link).layer().is_ok());
    // A target that is no regular file.
    let dev = s.sticky.join("dev.toml");
    symlink("/dev/zero", &dev).unwrap();
    let e = client(&dev).layer().unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // A loop, and a chain longer than the limit.
    let a = s.sticky.join("a.toml");
    let b = s.sticky.join("b.toml");
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let e = client(&a).layer().unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
    let mut prev = s.narrow.clone();
    for i in 0..12 {
        let next = s.sticky.join(format!("chain{i}.toml"));
        symlink(&prev, &next).unwrap();
        prev = next;
    }
    let e = client(&prev).layer().unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
    // A dangling link is a missing file.
    let gone = s.sticky.join("gone.toml");
    symlink(s.sticky.join("nothing.toml"), &gone).unwrap();
    let e = client(&gone).layer().unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    // A file used as a directory.
    let e = client(&s.narrow.join("x.toml"))
        .layer()
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
}

/// The leaf itself, not a link: not owned by this account or root, or writable by group or
/// others, is refused (the group bit alone is enough).
#[test]
fn a_leaf_writable_by_group_or_owned_by_another_account_is_refused() {
    let s = setup();
    for m in [0o664, 0o620, 0o646, 0o602] {
        mode(&s.narrow, m);
        let e = client(&s.narrow).layer().unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{m:o}: {e}");
    }
    mode(&s.narrow, 0o600);
    assert!(client(&s.narrow).layer().is_ok());
    if is_root() {
        std::os::unix::fs::lchown(&s.narrow, Some(65534), None).unwrap();
        let e = client(&s.narrow).layer().unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        // Root's own file, read by root: accepted.
        std::os::unix::fs::lchown(&s.narrow, Some(0), None).unwrap();
        assert!(client(&s.narrow).layer().is_ok());
    }
}
