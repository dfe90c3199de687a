//! The strict-parameter step of the gate: a parameter the method does not take is refused
//! before anything is sent (see [`crate::knowledge::check`] for what is enforced and why).

use serde_json::{Value, json};

use super::{Gate, GateError, Origin};
use crate::method::MethodName;

impl Gate {
    /// Whether this gate checks parameters: on in MCP by default, off in the CLI, forced on by
    /// any layer's `strict_params = true`.
    pub fn strict_params(&self) -> bool {
        self.policy.strict_params(self.origin == Origin::Mcp).0
    }

    /// Refuse the first part (the call, or a batch command) that has a parameter its method
    /// does not take. `params` is what the refusal records.
    pub(super) fn check_params(
        &self,
        parts: &[(MethodName, Value)],
        params: &Value,
    ) -> Result<(), GateError> {
        let (on, forced_by) = self.policy.strict_params(self.origin == Origin::Mcp);
        if !on {
            return Ok(());
        }
        for (m, p) in parts {
            if let Err(e) = crate::knowledge::check_params(m.as_str(), p) {
                let fix = match forced_by {
                    Some(l) => format!(
                        "remove `{}` (see `b24 describe {m}`); the operator policy ({}) checks parameters, no flag can turn it off",
                        e.parameter, l.source
                    ),
                    None if self.origin == Origin::Mcp => format!(
                        "remove `{}` (b24_describe {m} lists what it takes); if the documentation is behind the portal, the operator can start the server with --strict-params=false",
                        e.parameter
                    ),
                    None => format!(
                        "remove `{}` (see `b24 describe {m}` for what it takes); if the documentation is behind the portal, re-run with --strict-params=false",
                        e.parameter
                    ),
                };
                let r = self.refusal(m.as_str(), None, e.to_string(), fix, forced_by.is_some());
                return Err(self.refuse(r, params, vec![("unaccepted_param", json!(e.parameter))]));
            }
        }
        Ok(())
    }
}
