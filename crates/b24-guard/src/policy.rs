//! Policy: what may be called, and with which confirmation.
//!
//! Two layers. The *operator* (the person who deploys b24) writes `policy.toml` in the config
//! dir; the *agent* passes flags and env. The effective policy is the operator's, tightened by
//! the agent's: an agent can deny more, never allow more. In the original skill the same agent
//! passed every `--confirm-*` flag itself, so its gates protected nothing; here an operator can
//! deny destructive calls outright or require a plan for every write, and no flag changes that.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::GuardError;
use crate::catalog::{Catalog, Risk};

/// The operator's `policy.toml`. Every field only ever tightens.
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
}

impl PolicyFile {
    pub fn load(path: &std::path::Path) -> Result<Option<PolicyFile>, GuardError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| GuardError::PolicyFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GuardError::PolicyFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// What the calling agent asked for (flags and env).
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
}

/// The effective policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub operator: PolicyFile,
    pub operator_path: Option<String>,
    pub agent: AgentPolicy,
}

/// One call to decide on.
#[derive(Debug, Clone, Default)]
pub struct CallCheck<'a> {
    pub method: &'a str,
    pub params: Option<&'a Value>,
    pub confirm_write: bool,
    pub confirm_destructive: bool,
    /// The call comes from `b24 apply` of a recorded plan.
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
    /// True when the operator's policy file is what refuses: no agent flag can change it.
    pub operator_locked: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused {}: {}. {}", self.method, self.reason, self.fix)
    }
}

fn globs(pats: &[String]) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for p in pats {
        if let Ok(g) = Glob::new(&p.to_ascii_lowercase()) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
}

impl Policy {
    pub fn new(
        operator: Option<PolicyFile>,
        operator_path: Option<String>,
        agent: AgentPolicy,
    ) -> Policy {
        Policy {
            operator: operator.unwrap_or_default(),
            operator_path,
            agent,
        }
    }

    fn op_file(&self) -> String {
        self.operator_path
            .clone()
            .unwrap_or_else(|| "policy.toml".into())
    }

    pub fn require_plan(&self) -> bool {
        self.operator.require_plan_for_writes || self.agent.require_plan
    }

    /// Max writes per hour: the smaller of the operator's and the agent's.
    pub fn max_writes_per_hour(&self) -> Option<u32> {
        match (
            self.operator.max_writes_per_hour,
            self.agent.max_writes_per_hour,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decide on one call. Returns the risk it was judged at.
    pub fn check(&self, catalog: &Catalog, c: &CallCheck) -> Result<Risk, Refusal> {
        let m = c.method.trim().to_ascii_lowercase();
        let refuse = |risk: Option<Risk>, reason: String, fix: String, locked: bool| Refusal {
            method: c.method.to_string(),
            risk,
            reason,
            fix,
            operator_locked: locked,
        };
        let empty = Value::Null;
        let params = c.params.unwrap_or(&empty);
        let risk = match catalog.effective_risk(&m, params) {
            Some(r) => r,
            None => {
                let strict = self.agent.strict
                    || self.operator.strict
                    || self.operator.forbid_allow_unlisted;
                if self.operator.forbid_allow_unlisted {
                    return Err(refuse(
                        None,
                        "the method is not in the catalog of documented methods".into(),
                        format!(
                            "the operator policy ({}) forbids unlisted methods; no flag can allow it (check the name with `b24 methods --search`)",
                            self.op_file()
                        ),
                        true,
                    ));
                }
                if strict && !self.agent.allow_unlisted {
                    return Err(refuse(None, "the method is not in the catalog of documented methods (strict mode)".into(),
                        "check the name with `b24 methods --search`, or re-run with --allow-unlisted".into(), false));
                }
                Risk::Destructive // unknown and not refused: assume the worst
            }
        };
        let op_deny = globs(&self.operator.deny);
        if op_deny.is_match(&m) {
            return Err(refuse(
                Some(risk),
                "denied by the operator policy".into(),
                format!(
                    "the operator policy ({}) denies it; no flag can allow it",
                    self.op_file()
                ),
                true,
            ));
        }
        if globs(&self.agent.deny).is_match(&m) {
            return Err(refuse(
                Some(risk),
                "denied by --deny / B24_METHOD_DENYLIST".into(),
                "remove the matching --deny pattern".into(),
                false,
            ));
        }
        if !self.operator.allow.is_empty()
            && !globs(&self.operator.allow).is_match(&m)
            && m != "batch"
        {
            return Err(refuse(
                Some(risk),
                "not in the operator's allowlist".into(),
                format!(
                    "the operator policy ({}) allows only {:?}; no flag can allow it",
                    self.op_file(),
                    self.operator.allow
                ),
                true,
            ));
        }
        if !self.agent.allow.is_empty() && !globs(&self.agent.allow).is_match(&m) && m != "batch" {
            return Err(refuse(
                Some(risk),
                "not in the allowlist given by --allow / B24_METHOD_ALLOWLIST".into(),
                format!("add --allow '{m}'"),
                false,
            ));
        }
        let pack = catalog
            .get(&m)
            .map(|i| i.pack.clone())
            .unwrap_or_else(|| "other".into());
        if let Some(p) = &self.operator.packs
            && !p.iter().any(|x| x.eq_ignore_ascii_case(&pack))
            && m != "batch"
        {
            return Err(refuse(
                Some(risk),
                format!("pack `{pack}` is not enabled by the operator"),
                format!(
                    "the operator policy ({}) enables packs {p:?}; no flag can allow it",
                    self.op_file()
                ),
                true,
            ));
        }
        if let Some(p) = &self.agent.packs
            && !p.iter().any(|x| x.eq_ignore_ascii_case(&pack))
            && m != "batch"
        {
            return Err(refuse(
                Some(risk),
                format!("pack `{pack}` is not enabled"),
                format!("add `{pack}` to --packs (now {})", p.join(",")),
                false,
            ));
        }
        if risk == Risk::Read {
            return Ok(risk);
        }
        if self.operator.read_only {
            return Err(refuse(
                Some(risk),
                format!("a {risk} call in read-only mode"),
                format!(
                    "the operator policy ({}) is read-only; no flag can allow it",
                    self.op_file()
                ),
                true,
            ));
        }
        if self.agent.read_only {
            return Err(refuse(
                Some(risk),
                format!("a {risk} call in read-only mode"),
                "drop --read-only / B24_READ_ONLY".into(),
                false,
            ));
        }
        if risk == Risk::Destructive && self.operator.deny_destructive {
            return Err(refuse(
                Some(risk),
                "destructive calls are denied".into(),
                format!(
                    "the operator policy ({}) sets deny_destructive; no flag can allow it",
                    self.op_file()
                ),
                true,
            ));
        }
        let params_text = c
            .params
            .map(|p| p.to_string())
            .unwrap_or_else(|| "{}".into());
        let confirm = if risk == Risk::Destructive {
            "--confirm-destructive"
        } else {
            "--confirm-write"
        };
        if self.require_plan() && !c.via_plan && !c.no_send {
            let who = if self.operator.require_plan_for_writes {
                format!(
                    "the operator policy ({}) requires a plan for writes",
                    self.op_file()
                )
            } else {
                "plans are required (--require-plan / B24_REQUIRE_PLAN)".into()
            };
            return Err(refuse(
                Some(risk),
                format!("a {risk} call outside a plan"),
                format!(
                    "{who}: run `b24 plan {m} --params '{params_text}'`, then `b24 apply <plan id> {confirm}`"
                ),
                self.operator.require_plan_for_writes,
            ));
        }
        if c.no_send {
            return Ok(risk);
        }
        let confirmed = match risk {
            Risk::Destructive => c.confirm_destructive,
            _ => c.confirm_write || c.confirm_destructive,
        };
        if !confirmed {
            let how = if c.via_plan {
                format!("re-run the apply with {confirm}")
            } else {
                format!(
                    "re-run with {confirm}, or record a plan: `b24 plan {m} --params '{params_text}'` then `b24 apply <plan id> {confirm}`"
                )
            };
            return Err(refuse(
                Some(risk),
                format!("{m} is a {risk} call and was not confirmed"),
                how,
                false,
            ));
        }
        Ok(risk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &Policy, m: &str, cw: bool, cd: bool) -> Result<Risk, Refusal> {
        p.check(
            Catalog::builtin(),
            &CallCheck {
                method: m,
                confirm_write: cw,
                confirm_destructive: cd,
                ..Default::default()
            },
        )
    }

    #[test]
    fn confirmations() {
        let p = Policy::new(None, None, AgentPolicy::default());
        assert_eq!(check(&p, "crm.lead.list", false, false), Ok(Risk::Read));
        let r = check(&p, "crm.lead.add", false, false).unwrap_err();
        assert!(
            r.fix.contains("--confirm-write") && r.fix.contains("b24 plan crm.lead.add"),
            "{r}"
        );
        assert_eq!(check(&p, "crm.lead.add", true, false), Ok(Risk::Write));
        let r = check(&p, "crm.lead.delete", true, false).unwrap_err();
        assert!(r.fix.contains("--confirm-destructive"), "{r}");
        assert_eq!(
            check(&p, "crm.lead.delete", false, true),
            Ok(Risk::Destructive)
        );
        // unknown methods: destructive by default, refused in strict mode
        assert_eq!(
            check(&p, "made.up.method", false, true),
            Ok(Risk::Destructive)
        );
        let strict = Policy::new(
            None,
            None,
            AgentPolicy {
                strict: true,
                ..Default::default()
            },
        );
        assert!(
            check(&strict, "made.up.method", false, true)
                .unwrap_err()
                .fix
                .contains("--allow-unlisted")
        );
    }

    #[test]
    fn operator_cannot_be_loosened() {
        let op = PolicyFile {
            deny_destructive: true,
            require_plan_for_writes: true,
            forbid_allow_unlisted: true,
            ..Default::default()
        };
        let agent = AgentPolicy {
            allow_unlisted: true,
            ..Default::default()
        };
        let p = Policy::new(Some(op), Some("/etc/b24/policy.toml".into()), agent);
        let r = check(&p, "crm.lead.delete", true, true).unwrap_err();
        assert!(
            r.operator_locked && r.fix.contains("no flag can allow it"),
            "{r}"
        );
        let r = check(&p, "crm.lead.add", true, true).unwrap_err();
        assert!(r.fix.contains("b24 plan"), "{r}");
        let ok = p.check(
            Catalog::builtin(),
            &CallCheck {
                method: "crm.lead.add",
                confirm_write: true,
                via_plan: true,
                ..Default::default()
            },
        );
        assert_eq!(ok, Ok(Risk::Write));
        assert!(
            check(&p, "made.up", true, true)
                .unwrap_err()
                .operator_locked
        );
    }

    #[test]
    fn globs_and_packs() {
        let p = Policy::new(
            None,
            None,
            AgentPolicy {
                packs: Some(vec!["core".into()]),
                deny: vec!["crm.deal.*".into()],
                ..Default::default()
            },
        );
        assert!(check(&p, "crm.deal.list", false, false).is_err());
        assert!(check(&p, "crm.lead.list", false, false).is_ok());
        let r = check(&p, "bizproc.workflow.kill", false, true).unwrap_err();
        assert!(r.fix.contains("automation"), "{r}");
        let op = PolicyFile {
            read_only: true,
            ..Default::default()
        };
        let p = Policy::new(Some(op), None, AgentPolicy::default());
        assert!(
            check(&p, "crm.lead.add", true, true)
                .unwrap_err()
                .operator_locked
        );
    }
}
