//! Deciding on one call: every layer's deny, allow and pack rules, then read-only and
//! `deny_destructive`, then the plan requirement and the confirmations — in that order, so a
//! refusal names the strictest reason and whether an operator locked it.

use serde_json::Value;

use super::{CallCheck, Layer, LayerKind, Policy, Refusal};
use crate::catalog::{Catalog, Risk};

impl Policy {
    /// Deny rules alone, for a name that is not itself classified — `batch`, whose commands
    /// are checked one by one, can still be denied as a whole.
    pub fn check_deny(&self, method: &str) -> Result<(), Refusal> {
        let m = method.trim().to_ascii_lowercase();
        for l in &self.layers {
            if l.deny.is_match(&m) {
                let op = l.kind == LayerKind::Operator;
                return Err(Refusal {
                    method: m.clone(),
                    risk: None,
                    reason: if op {
                        "denied by the operator policy".into()
                    } else {
                        format!("denied by a deny rule ({})", l.source)
                    },
                    fix: if op {
                        format!(
                            "the operator policy ({}) forbids it; no flag can allow it",
                            l.source
                        )
                    } else {
                        format!(
                            "the deny rule comes from {}; remove the matching pattern there",
                            l.source
                        )
                    },
                    operator_locked: op,
                });
            }
        }
        Ok(())
    }

    /// Decide on one call. Returns the risk it was judged at.
    pub fn check(&self, catalog: &Catalog, c: &CallCheck) -> Result<Risk, Refusal> {
        let m = c.method.trim().to_ascii_lowercase();
        let refuse = |risk: Option<Risk>, reason: String, fix: String, locked: bool| Refusal {
            method: m.clone(),
            risk,
            reason,
            fix,
            operator_locked: locked,
        };
        let locked_fix = |l: &Layer| {
            format!(
                "the operator policy ({}) forbids it; no flag can allow it",
                l.source
            )
        };
        let empty = Value::Null;
        let params = c.params.unwrap_or(&empty);
        let risk = match catalog.effective_risk(&m, params) {
            Some(r) => r,
            None => {
                // In any layer: a caller's file (an MCP client's policy) that forbids unknown
                // methods is not lifted by the server's --allow-unlisted either.
                if let Some(l) = self.layers.iter().find(|l| l.rules.forbid_allow_unlisted) {
                    let op = l.kind == LayerKind::Operator;
                    return Err(refuse(
                        None,
                        "the method is unknown: it is not in the catalog of documented methods"
                            .into(),
                        format!(
                            "the {}policy ({}) forbids unknown methods; no flag can allow it (check the name with `b24 methods --search`)",
                            if op { "operator " } else { "" },
                            l.source
                        ),
                        op,
                    ));
                }
                if let Some(l) = self.layers.iter().find(|l| l.rules.strict)
                    && !self.allow_unlisted
                {
                    let locked = l.kind == LayerKind::Operator;
                    return Err(refuse(
                        None,
                        format!("the method is unknown: it is not in the catalog of documented methods (strict mode, {})", l.source),
                        "check the name with `b24 methods --search`, or re-run with --allow-unlisted".into(),
                        locked,
                    ));
                }
                Risk::Destructive // unknown and not refused: assume the worst
            }
        };
        let pack = catalog
            .get(&m)
            .map(|i| i.pack.clone())
            .unwrap_or_else(|| "other".into());
        for l in &self.layers {
            let op = l.kind == LayerKind::Operator;
            if l.deny.is_match(&m) {
                return Err(if op {
                    refuse(
                        Some(risk),
                        "denied by the operator policy".into(),
                        locked_fix(l),
                        true,
                    )
                } else {
                    refuse(
                        Some(risk),
                        format!("denied by a deny rule ({})", l.source),
                        format!(
                            "the deny rule comes from {}; remove the matching pattern there",
                            l.source
                        ),
                        false,
                    )
                });
            }
            if !l.rules.allow.is_empty() && !l.allow.is_match(&m) {
                return Err(if op {
                    refuse(
                        Some(risk),
                        format!("not in the operator's allowlist {:?}", l.rules.allow),
                        locked_fix(l),
                        true,
                    )
                } else {
                    refuse(
                        Some(risk),
                        format!("not in the allowlist ({})", l.source),
                        format!("add --allow '{m}'"),
                        false,
                    )
                });
            }
            if let Some(p) = &l.rules.packs
                && !p.iter().any(|x| x.trim().eq_ignore_ascii_case(&pack))
            {
                return Err(if op {
                    refuse(
                        Some(risk),
                        format!("pack `{pack}` is not enabled by the operator (packs {p:?})"),
                        locked_fix(l),
                        true,
                    )
                } else {
                    refuse(
                        Some(risk),
                        format!("pack `{pack}` is not enabled ({})", l.source),
                        format!("add `{pack}` to --packs (now {})", p.join(",")),
                        false,
                    )
                });
            }
        }
        if risk == Risk::Read {
            return Ok(risk);
        }
        for l in &self.layers {
            let op = l.kind == LayerKind::Operator;
            if l.rules.read_only {
                return Err(if op {
                    refuse(
                        Some(risk),
                        format!("{} {risk} call in read-only mode", article(risk)),
                        format!(
                            "the operator policy ({}) is read-only; no flag can allow it",
                            l.source
                        ),
                        true,
                    )
                } else {
                    refuse(
                        Some(risk),
                        format!(
                            "{} {risk} call in read-only mode ({})",
                            article(risk),
                            l.source
                        ),
                        format!(
                            "read-only comes from {} (--read-only / B24_READ_ONLY)",
                            l.source
                        ),
                        false,
                    )
                });
            }
            if risk == Risk::Destructive && l.rules.deny_destructive {
                return Err(refuse(
                    Some(risk),
                    "destructive calls are denied".into(),
                    format!(
                        "the policy ({}) sets deny_destructive; no flag can allow it",
                        l.source
                    ),
                    op,
                ));
            }
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
            let who = match self.layers.iter().find(|l| l.rules.require_plan_for_writes) {
                Some(l) if l.kind == LayerKind::Operator => {
                    format!(
                        "the operator policy ({}) requires a plan for writes",
                        l.source
                    )
                }
                _ => "plans are required (--require-plan / B24_REQUIRE_PLAN)".into(),
            };
            return Err(refuse(
                Some(risk),
                format!("{} {risk} call outside a plan", article(risk)),
                format!(
                    "{who}: run `b24 plan {m} --params '{params_text}'`, then `b24 apply <plan id> {confirm}`"
                ),
                self.require_plan_locked(),
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
                format!("{m} is {} {risk} call and was not confirmed", article(risk)),
                how,
                false,
            ));
        }
        Ok(risk)
    }
}

/// "a write call", "an admin call".
fn article(risk: Risk) -> &'static str {
    if risk.to_string().starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}
