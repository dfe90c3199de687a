//! Confirmations: who may say yes to a write.
//!
//! Flags (`--confirm-write`, `confirm: true`) are typed by whoever drives b24 — often the very
//! model the gate is there to restrain. So when the front end can reach a *person* (an MCP
//! client that supports elicitation), a destructive call is confirmed by that person and the
//! model's own `confirm_*` arguments are not enough. An operator can demand a person for every
//! destructive call or every write (`require_person_confirmation`); where no person can be
//! asked, such calls are refused. With `require_plan_for_writes`, an apply through MCP is
//! confirmed by the person too.
//!
//! The person is only asked once every other gate has passed, so nobody is bothered about a
//! call that would be refused anyway.

use futures::future::BoxFuture;

use super::{Gate, GateError, Origin};
use crate::catalog::Risk;
use crate::policy::{CallCheck, PersonConfirm};

/// A person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Yes,
    /// They said no, or did not tick the box, or did not answer in time.
    No(String),
    /// The question could not be put (the client cannot elicit after all).
    CannotAsk,
}

/// A channel to the person behind the front end, if there is one.
pub trait Person: Send + Sync {
    /// Whether a question can be put to a person at all.
    fn can_ask(&self) -> bool;
    /// Whether the client says a person is there to confirm (it declares elicitation), even
    /// if this server cannot put the question in the protocol version in use. Then flags are
    /// not enough for a destructive call: it is refused rather than confirmed by the model.
    fn declares_person(&self) -> bool {
        self.can_ask()
    }
    /// Put a yes/no question.
    fn ask(&self, question: String) -> BoxFuture<'_, Answer>;
}

/// No person can be asked (the CLI never prompts: agents run it).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPerson;

impl Person for NoPerson {
    fn can_ask(&self) -> bool {
        false
    }
    fn ask(&self, _question: String) -> BoxFuture<'_, Answer> {
        Box::pin(async { Answer::CannotAsk })
    }
}

/// The confirmations a call ends up with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Confirmed {
    pub write: bool,
    pub destructive: bool,
    pub by_person: bool,
}

impl Gate {
    /// Decide the confirmations of calls of risk `worst` (the highest among `checks`):
    /// ask the person when one must or can be asked, else take the flags. Returns a refusal
    /// when a person is required and cannot be asked, or says no.
    pub(super) async fn settle_confirmation(
        &self,
        checks: &[CallCheck<'_>],
        flags: Confirmed,
        person: &dyn Person,
        question: impl FnOnce() -> String,
        label: &str,
    ) -> Result<Confirmed, GateError> {
        let via_plan = checks.iter().any(|c| c.via_plan);
        // Would everything pass if it were confirmed? If not, the plain check's refusal stands.
        let mut worst = Risk::Read;
        for c in checks {
            let all = CallCheck {
                confirm_write: true,
                confirm_destructive: true,
                ..c.clone()
            };
            match self.policy.check(self.catalog, &all) {
                Ok(r) => worst = worst.max(r),
                Err(_) => return Ok(flags),
            }
        }
        if worst == Risk::Read {
            return Ok(flags);
        }
        let demanded = match self.policy.person_confirmation() {
            PersonConfirm::Writes => true,
            PersonConfirm::Destructive => worst == Risk::Destructive,
            PersonConfirm::None => false,
        };
        let plan_apply = via_plan && self.policy.require_plan() && self.origin == Origin::Mcp;
        let reachable = person.can_ask();
        let present = reachable || person.declares_person();
        let ask = demanded || plan_apply || (present && worst == Risk::Destructive);
        if !ask {
            return Ok(flags);
        }
        let why = if demanded {
            "the operator policy requires a person's confirmation"
        } else if plan_apply {
            "plans are required, so a person confirms the apply"
        } else {
            "a destructive call is confirmed by the person when the client can ask"
        };
        if !reachable {
            let r = self.refusal(
                label,
                Some(worst),
                format!("{why}, and no person can be asked here"),
                "use an MCP client that supports elicitation (form mode), so the person can confirm; confirmation flags are not enough",
                demanded || (plan_apply && self.policy.require_plan_locked()),
            );
            return Err(self.refuse(
                r,
                &serde_json::Value::Null,
                vec![("stage", serde_json::json!("confirmation"))],
            ));
        }
        match person.ask(question()).await {
            Answer::Yes => {
                let _ = self.record(
                    label,
                    vec![
                        ("risk", serde_json::json!(worst)),
                        ("decision", serde_json::json!("confirmed_by_person")),
                        ("via", serde_json::json!("elicitation")),
                    ],
                );
                Ok(Confirmed {
                    write: true,
                    destructive: true,
                    by_person: true,
                })
            }
            Answer::No(reason) => {
                let r = self.refusal(
                    label,
                    Some(worst),
                    format!("{why}, and the person did not confirm ({reason})"),
                    "do not repeat the call unless the person asks for it",
                    false,
                );
                Err(self.refuse(
                    r,
                    &serde_json::Value::Null,
                    vec![("stage", serde_json::json!("confirmation"))],
                ))
            }
            Answer::CannotAsk => {
                let r = self.refusal(
                    label,
                    Some(worst),
                    format!("{why}, and the question could not be put to the person"),
                    "use an MCP client that supports elicitation (form mode)",
                    demanded,
                );
                Err(self.refuse(
                    r,
                    &serde_json::Value::Null,
                    vec![("stage", serde_json::json!("confirmation"))],
                ))
            }
        }
    }
}
