//! Policy: what may be called, and with which confirmation.
//!
//! The effective policy is a stack of *layers*, and a call must pass every one of them. Layers
//! only ever add restrictions, so adding a layer can never allow more: that is what lets the
//! caller contribute layers (flags, env, `--env-file`, profiles, a `--config-dir` policy) without
//! being able to loosen anything. The operator's layers are read from fixed places the caller
//! cannot redirect (see [`crate::sources`]); a caller layer can narrow them, never widen them.
//!
//! In the original skill the same agent passed every `--confirm-*` flag itself, so its gates
//! protected nothing; here an operator can deny destructive calls outright, require a plan for
//! every write, or require that a *person* confirms, and no flag changes that.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Value, json};

use crate::GuardError;
use crate::catalog::Risk;

/// Which calls a person (not the model or the script) must confirm.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PersonConfirm {
    /// Flags (`--confirm-*`, `confirm: true`) are enough where no person can be asked.
    #[default]
    None,
    /// Destructive calls need a person's yes.
    Destructive,
    /// Every write needs a person's yes.
    Writes,
}

/// How much of a call's params the audit log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditParams {
    /// Parameter names and keyed digests of the values (personal data stays out of the log).
    #[default]
    Keys,
    /// The params themselves, secrets redacted.
    Full,
}

/// One policy file (`policy.toml`). Every field only ever tightens.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Only methods matching these globs may be called.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Methods matching these globs are refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Only methods in these packs may be called.
    #[serde(default)]
    pub packs: Option<Vec<String>>,
    #[serde(default)]
    pub read_only: bool,
    /// Destructive calls are refused whatever flags are given.
    #[serde(default)]
    pub deny_destructive: bool,
    /// Writes (and destructive calls) must go through `b24 plan` → `b24 apply`.
    #[serde(default)]
    pub require_plan_for_writes: bool,
    /// Methods missing from the catalog are refused; `--allow-unlisted` cannot override.
    #[serde(default)]
    pub forbid_allow_unlisted: bool,
    /// Refuse methods missing from the catalog (unless `--allow-unlisted`).
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    pub max_writes_per_hour: Option<u32>,
    /// A person must confirm these calls (through the MCP client's elicitation); refused where
    /// no person can be asked.
    #[serde(default)]
    pub require_person_confirmation: Option<PersonConfirm>,
    /// Where plans, idempotency records, write counters and the audit log live (operator files
    /// only; ignored in caller layers).
    #[serde(default)]
    pub guard_dir: Option<PathBuf>,
    /// How much of each call's params the audit log keeps (operator files only).
    #[serde(default)]
    pub audit_params: Option<AuditParams>,
    /// Reads may go on when the audit log cannot take their record (operator files only;
    /// writes are never sent unrecorded).
    #[serde(default)]
    pub allow_unaudited_reads: bool,
    /// Refuse parameters a method does not take, where its documentation lists them all
    /// (`b24_guard::knowledge::check`). `true` in any layer turns it on; `false` turns off the
    /// front end's default (on in MCP, off in the CLI) unless another layer says `true`.
    #[serde(default)]
    pub strict_params: Option<bool>,
}

/// 1-based line of the first occurrence of `needle` in `text` (for error messages).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

impl PolicyFile {
    /// Parse a policy file's text; `path` is for messages. Every glob is checked here, so a
    /// file with a glob that cannot be compiled is an error, never a rule silently dropped.
    pub fn parse(text: &str, path: &Path) -> Result<PolicyFile, GuardError> {
        let err = |line: Option<usize>, reason: String| GuardError::PolicyFile {
            path: match line {
                Some(l) => format!("{}:{l}", path.display()),
                None => path.display().to_string(),
            },
            reason,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            err(line, e.message().to_string())
        })?;
        for g in file.allow.iter().chain(&file.deny) {
            if let Err(e) = compile_glob(g) {
                return Err(err(line_of(text, g), e));
            }
        }
        Ok(file)
    }

    /// Load a policy file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<PolicyFile>, GuardError> {
        match std::fs::read_to_string(path) {
            Ok(text) => PolicyFile::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GuardError::PolicyFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// What the caller asked for (flags, env, env files, profiles).
#[derive(Debug, Clone, Default)]
pub struct AgentPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub packs: Option<Vec<String>>,
    pub read_only: bool,
    pub strict: bool,
    pub allow_unlisted: bool,
    pub require_plan: bool,
    pub max_writes_per_hour: Option<u32>,
    /// `--strict-params[=BOOL]`: `None` leaves the front end's default.
    pub strict_params: Option<bool>,
}

impl AgentPolicy {
    /// The same restrictions as a policy file (`allow_unlisted` is not a restriction; it is
    /// kept by [`Policy`] itself).
    pub fn rules(&self) -> PolicyFile {
        PolicyFile {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            packs: self.packs.clone(),
            read_only: self.read_only,
            strict: self.strict,
            require_plan_for_writes: self.require_plan,
            max_writes_per_hour: self.max_writes_per_hour,
            strict_params: self.strict_params,
            ..Default::default()
        }
    }
}

/// Whose rules a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Read from a fixed place (system-wide or the account's own file): no caller input can
    /// skip it, and refusals say that no flag can allow the call.
    Operator,
    /// Given by the caller (flags, env, env file, profile, `--config-dir`): it can only narrow.
    Caller,
}

/// One layer of rules and where it came from.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kind: LayerKind,
    /// e.g. `/etc/b24/policy.toml`, `flags and environment`, `--env-file ./x.env`.
    pub source: String,
    pub rules: PolicyFile,
    allow: GlobSet,
    deny: GlobSet,
}

fn compile_glob(p: &str) -> Result<Glob, String> {
    let p = p.trim().to_ascii_lowercase();
    if p.is_empty() {
        return Err("an empty glob".into());
    }
    Glob::new(&p).map_err(|e| format!("invalid glob {p:?}: {e}"))
}

fn glob_set(pats: &[String], source: &str) -> Result<GlobSet, GuardError> {
    let mut b = GlobSetBuilder::new();
    for p in pats {
        let g = compile_glob(p).map_err(|reason| GuardError::PolicyFile {
            path: source.to_string(),
            reason,
        })?;
        b.add(g);
    }
    b.build().map_err(|e| GuardError::PolicyFile {
        path: source.to_string(),
        reason: e.to_string(),
    })
}

impl Layer {
    /// A layer; fails when a glob does not compile (fail closed: never drop a rule).
    pub fn new(
        kind: LayerKind,
        source: impl Into<String>,
        mut rules: PolicyFile,
    ) -> Result<Layer, GuardError> {
        let source = source.into();
        if kind == LayerKind::Caller {
            // Where the operator's evidence lives is not the caller's to choose.
            rules.guard_dir = None;
            rules.audit_params = None;
            rules.allow_unaudited_reads = false;
        }
        Ok(Layer {
            allow: glob_set(&rules.allow, &source)?,
            deny: glob_set(&rules.deny, &source)?,
            kind,
            source,
            rules,
        })
    }
}

/// The effective policy: every layer must pass.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub layers: Vec<Layer>,
    /// `--allow-unlisted`: lifts a caller's `strict`, never an operator's `forbid_allow_unlisted`.
    pub allow_unlisted: bool,
}

/// One call to decide on (the method already normalised by [`crate::method::normalise`]).
#[derive(Debug, Clone, Default)]
pub struct CallCheck<'a> {
    pub method: &'a str,
    pub params: Option<&'a Value>,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    /// The call comes from applying a recorded plan.
    pub via_plan: bool,
    /// Nothing will be sent (`--dry-run`, `b24 plan`): confirmations are not needed.
    pub no_send: bool,
}

/// Why a call was refused and what would allow it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Refusal {
    pub method: String,
    pub risk: Option<Risk>,
    pub reason: String,
    /// The exact flag or plan that would allow the call, or why nothing can.
    pub fix: String,
    /// True when an operator's policy is what refuses: no caller input can change it.
    pub operator_locked: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused {}: {}. {}", self.method, self.reason, self.fix)
    }
}

impl Policy {
    /// A policy from an operator file (if any) and the caller's flags — the common case in
    /// tests and in simple embeddings.
    pub fn new(
        operator: Option<PolicyFile>,
        operator_path: Option<String>,
        agent: AgentPolicy,
    ) -> Result<Policy, GuardError> {
        let mut layers = Vec::new();
        if let Some(op) = operator {
            layers.push(Layer::new(
                LayerKind::Operator,
                operator_path.unwrap_or_else(|| "policy.toml".into()),
                op,
            )?);
        }
        layers.push(Layer::new(
            LayerKind::Caller,
            "flags and environment",
            agent.rules(),
        )?);
        Ok(Policy {
            layers,
            allow_unlisted: agent.allow_unlisted,
        })
    }

    fn operator_layers(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter().filter(|l| l.kind == LayerKind::Operator)
    }

    /// Whether any operator layer exists (then the guard's records live where it says).
    pub fn has_operator_layer(&self) -> bool {
        self.operator_layers().next().is_some()
    }

    /// Writes must go through a plan (any layer may ask for it).
    pub fn require_plan(&self) -> bool {
        self.layers.iter().any(|l| l.rules.require_plan_for_writes)
    }

    /// Whether the plan requirement comes from an operator layer.
    pub fn require_plan_locked(&self) -> bool {
        self.operator_layers()
            .any(|l| l.rules.require_plan_for_writes)
    }

    /// Max writes per hour: the smallest of all layers'.
    pub fn max_writes_per_hour(&self) -> Option<u32> {
        self.layers
            .iter()
            .filter_map(|l| l.rules.max_writes_per_hour)
            .min()
    }

    /// The operator's own write budget (the smallest an operator layer sets): a total for
    /// every writer on the portal, whatever budgets the callers or MCP clients narrow it to.
    pub fn operator_max_writes_per_hour(&self) -> Option<u32> {
        self.operator_layers()
            .filter_map(|l| l.rules.max_writes_per_hour)
            .min()
    }

    /// Whether the write budget comes from an operator layer.
    pub fn max_writes_locked(&self) -> bool {
        self.operator_layers()
            .any(|l| l.rules.max_writes_per_hour.is_some())
    }

    /// Which calls a person must confirm (the strictest layer wins).
    pub fn person_confirmation(&self) -> PersonConfirm {
        self.layers
            .iter()
            .filter_map(|l| l.rules.require_person_confirmation)
            .max()
            .unwrap_or_default()
    }

    /// The operator's guard directory, if an operator layer names one (system file first).
    pub fn guard_dir(&self) -> Option<&Path> {
        self.operator_layers()
            .find_map(|l| l.rules.guard_dir.as_deref())
    }

    /// How much of the params the audit log keeps (`full` only when an operator asks).
    pub fn audit_params(&self) -> AuditParams {
        self.operator_layers()
            .find_map(|l| l.rules.audit_params)
            .unwrap_or_default()
    }

    /// Whether an operator lets reads go on unrecorded when the audit log fails.
    pub fn allow_unaudited_reads(&self) -> bool {
        self.operator_layers()
            .any(|l| l.rules.allow_unaudited_reads)
    }

    /// Whether parameters are checked against the documentation, given the front end's
    /// default (MCP: on; CLI: off), and the operator layer that forces it, if one does.
    pub fn strict_params(&self, default_on: bool) -> (bool, Option<&Layer>) {
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| l.rules.strict_params == Some(true))
        {
            let op = (l.kind == LayerKind::Operator).then_some(l);
            return (true, op);
        }
        let off = self
            .layers
            .iter()
            .any(|l| l.rules.strict_params == Some(false));
        (default_on && !off, None)
    }

    /// The effective policy and its sources, for `b24 doctor`.
    pub fn describe(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"kind": l.kind, "source": l.source, "rules": l.rules}))
            .collect();
        json!({
            "layers": layers,
            "effective": {
                "read_only": self.layers.iter().any(|l| l.rules.read_only),
                "deny_destructive": self.layers.iter().any(|l| l.rules.deny_destructive),
                "require_plan_for_writes": self.require_plan(),
                "max_writes_per_hour": self.max_writes_per_hour(),
                "require_person_confirmation": self.person_confirmation(),
                "strict": self.layers.iter().any(|l| l.rules.strict || l.rules.forbid_allow_unlisted),
                "allow_unlisted": self.allow_unlisted && !self.layers.iter().any(|l| l.rules.forbid_allow_unlisted),
                "audit_params": self.audit_params(),
                "strict_params": {"cli": self.strict_params(false).0, "mcp": self.strict_params(true).0},
            },
        })
    }
}

mod check;

#[cfg(test)]
mod tests;
