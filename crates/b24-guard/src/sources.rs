//! Where the policy comes from, and why the caller cannot choose it.
//!
//! An operator's rules are only worth something if the agent they restrain cannot make b24
//! look elsewhere. So the operator's files are found without consulting anything the caller
//! controls — no flag, no environment variable, no `$HOME`:
//!
//! 1. the system-wide file, `/etc/b24/policy.toml` (fixed at build time);
//! 2. the account's own file, `<home>/.config/b24/policy.toml`, where `<home>` comes from the
//!    user database for the effective user id.
//!
//! Both are always read. Everything the caller controls — flags, the process environment,
//! `--env-file`, profiles, a `policy.toml` in `--config-dir` — becomes further [`Layer`]s that
//! can only narrow (see [`crate::policy`]). When an operator file exists, the records its rules
//! depend on (the write counter, plans, idempotency records, the audit log) also live in a
//! place the caller cannot redirect: the operator's `guard_dir`, or the account's
//! `<home>/.local/state/b24`.

use std::path::{Path, PathBuf};

use crate::GuardError;
use crate::policy::{AgentPolicy, Layer, LayerKind, Policy, PolicyFile};

/// The system-wide operator policy. Only a build can change it.
pub const SYSTEM_POLICY: &str = match option_env!("B24_SYSTEM_POLICY_PATH") {
    Some(p) => p,
    None => "/etc/b24/policy.toml",
};

/// The fixed places of the operator's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPaths {
    pub system: PathBuf,
    /// `None` when the account has no home directory in the user database.
    pub user: Option<PathBuf>,
    /// The account's own state directory (used for the guard's records when an operator
    /// file exists and names no `guard_dir`).
    pub user_state: Option<PathBuf>,
}

/// The effective user's home directory from the user database.
pub fn account_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| d.is_absolute())
}

impl OperatorPaths {
    /// The real fixed places.
    pub fn fixed() -> OperatorPaths {
        let home = account_home();
        OperatorPaths {
            system: PathBuf::from(SYSTEM_POLICY),
            user: home.as_ref().map(|h| h.join(".config/b24/policy.toml")),
            user_state: home.map(|h| h.join(".local/state/b24")),
        }
    }
}

/// A layer the caller contributed, by name (`--env-file ./a.env`, `profile prod`, ...).
#[derive(Debug, Clone)]
pub struct CallerLayer {
    pub source: String,
    pub policy: AgentPolicy,
}

/// Everything the caller controls that can feed policy.
#[derive(Debug, Clone, Default)]
pub struct CallerInputs {
    /// Flags and the process environment.
    pub flags: AgentPolicy,
    /// Layers read from `--env-file` and profiles.
    pub extra: Vec<CallerLayer>,
    /// `policy.toml` in the caller-chosen config dir (a narrowing layer only).
    pub config_dir_policy: Option<PathBuf>,
}

/// The resolved policy and where the guard keeps its records.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub policy: Policy,
    /// Where plans, idempotency records and the write counter live.
    pub guard_dir: PathBuf,
    /// True when `guard_dir` was chosen by an operator layer (not the caller).
    pub guard_dir_fixed: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Build the effective policy: operator files from `paths` (always), then the caller's layers.
/// `caller_state` is the caller's state dir, used for the guard's records only when no operator
/// file exists. Any file that does not parse, or any glob that does not compile, is an error.
pub fn resolve(
    paths: &OperatorPaths,
    caller: &CallerInputs,
    caller_state: &Path,
) -> Result<Resolved, GuardError> {
    let mut layers = Vec::new();
    let mut operator_files: Vec<&Path> = Vec::new();
    for p in std::iter::once(paths.system.as_path()).chain(paths.user.as_deref()) {
        if let Some(file) = PolicyFile::load(p)? {
            layers.push(Layer::new(
                LayerKind::Operator,
                p.display().to_string(),
                file,
            )?);
            operator_files.push(p);
        }
    }
    if let Some(p) = &caller.config_dir_policy
        && !operator_files.iter().any(|o| same_file(o, p))
        && let Some(file) = PolicyFile::load(p)?
    {
        layers.push(Layer::new(
            LayerKind::Caller,
            format!("{} (config dir)", p.display()),
            file,
        )?);
    }
    layers.push(Layer::new(
        LayerKind::Caller,
        "flags and environment",
        caller.flags.rules(),
    )?);
    for l in &caller.extra {
        layers.push(Layer::new(
            LayerKind::Caller,
            l.source.clone(),
            l.policy.rules(),
        )?);
    }
    let policy = Policy {
        layers,
        allow_unlisted: caller.flags.allow_unlisted,
    };
    let (guard_dir, fixed) = if let Some(d) = policy.guard_dir() {
        (d.to_path_buf(), true)
    } else if policy.has_operator_layer() {
        match &paths.user_state {
            Some(d) => (d.clone(), true),
            None => {
                return Err(GuardError::PolicyFile {
                    path: paths.system.display().to_string(),
                    reason: "an operator policy exists but the account has no home directory for the guard's records: set guard_dir in it".into(),
                });
            }
        }
    } else {
        (caller_state.to_path_buf(), false)
    };
    Ok(Resolved {
        policy,
        guard_dir,
        guard_dir_fixed: fixed,
    })
}

/// Falsey spellings, as the CLI's flags read them.
fn truthy(s: &str) -> bool {
    !matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off" | "n" | "f"
    )
}

/// Policy settings from `B24_*` variables (an env file, a profile). A value that does not
/// parse is an error, never ignored.
pub fn agent_from_vars(
    source: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<AgentPolicy>, GuardError> {
    let list = |k: &str| -> Vec<String> {
        get(k)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let flag = |k: &str| get(k).is_some_and(|v| truthy(&v));
    let max = match get("B24_MAX_WRITES_PER_HOUR") {
        Some(v) => Some(
            v.trim()
                .parse::<u32>()
                .map_err(|_| GuardError::PolicyFile {
                    path: source.to_string(),
                    reason: format!("B24_MAX_WRITES_PER_HOUR={v:?} is not a whole number"),
                })?,
        ),
        None => None,
    };
    let packs = list("B24_PACKS");
    let a = AgentPolicy {
        allow: list("B24_METHOD_ALLOWLIST"),
        deny: list("B24_METHOD_DENYLIST"),
        packs: (!packs.is_empty()).then_some(packs),
        read_only: flag("B24_READ_ONLY"),
        strict: flag("B24_STRICT"),
        allow_unlisted: false,
        require_plan: flag("B24_REQUIRE_PLAN"),
        max_writes_per_hour: max,
        strict_params: get("B24_STRICT_PARAMS").map(|v| truthy(&v)),
    };
    let any = !a.allow.is_empty()
        || !a.deny.is_empty()
        || a.packs.is_some()
        || a.read_only
        || a.strict
        || a.strict_params.is_some()
        || a.require_plan
        || a.max_writes_per_hour.is_some();
    Ok(any.then_some(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::policy::CallCheck;

    fn paths(dir: &Path) -> OperatorPaths {
        OperatorPaths {
            system: dir.join("etc/policy.toml"),
            user: Some(dir.join("home/.config/b24/policy.toml")),
            user_state: Some(dir.join("home/.local/state/b24")),
        }
    }

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn operator_files_are_always_read_and_hold_the_records() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        write(&p.system, "deny = [\"crm.lead.delete\"]\n");
        write(p.user.as_ref().unwrap(), "max_writes_per_hour = 5\n");
        let caller_state = t.path().join("caller-state");
        let caller = CallerInputs {
            config_dir_policy: Some(t.path().join("elsewhere/policy.toml")),
            ..Default::default()
        };
        let r = resolve(&p, &caller, &caller_state).unwrap();
        assert_eq!(r.policy.max_writes_per_hour(), Some(5));
        assert_eq!(r.guard_dir, t.path().join("home/.local/state/b24"));
        assert!(r.guard_dir_fixed);
        let c = CallCheck {
            method: "crm.lead.delete",
            confirm_destructive: true,
            ..Default::default()
        };
        assert!(
            r.policy
                .check(Catalog::builtin(), &c)
                .unwrap_err()
                .operator_locked
        );
        // the operator may name the guard dir; the caller may not
        write(&p.system, "guard_dir = \"/var/lib/b24\"\n");
        let r = resolve(&p, &caller, &caller_state).unwrap();
        assert_eq!(r.guard_dir, PathBuf::from("/var/lib/b24"));
    }

    #[test]
    fn without_operator_files_the_caller_state_is_used() {
        let t = tempfile::tempdir().unwrap();
        let r = resolve(&paths(t.path()), &CallerInputs::default(), t.path()).unwrap();
        assert_eq!(r.guard_dir, t.path());
        assert!(!r.guard_dir_fixed && !r.policy.has_operator_layer());
    }

    #[test]
    fn a_broken_file_refuses_everything() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(t.path());
        write(
            p.user.as_ref().unwrap(),
            "read_only = true\ndeny = [\"crm.{\"]\n",
        );
        let e = resolve(&p, &CallerInputs::default(), t.path()).unwrap_err();
        assert!(e.to_string().contains("policy.toml:2"), "{e}");
    }

    #[test]
    fn env_file_vars_narrow() {
        let vars = |k: &str| match k {
            "B24_READ_ONLY" => Some("1".to_string()),
            "B24_METHOD_DENYLIST" => Some("crm.deal.*, ,user.*".to_string()),
            _ => None,
        };
        let a = agent_from_vars("--env-file x", vars).unwrap().unwrap();
        assert!(a.read_only);
        assert_eq!(a.deny, ["crm.deal.*", "user.*"]);
        assert!(agent_from_vars("x", |_| None).unwrap().is_none());
        let bad = agent_from_vars("x", |k| {
            (k == "B24_MAX_WRITES_PER_HOUR").then(|| "lots".into())
        });
        assert!(bad.is_err());
        let off = agent_from_vars("x", |k| (k == "B24_READ_ONLY").then(|| "off".into())).unwrap();
        assert!(off.is_none());
    }
}
