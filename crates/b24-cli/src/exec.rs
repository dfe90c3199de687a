//! The CLI's side of the gate: build a [`Gate`] from the global flags, and turn what it says
//! into exit codes. Every decision — normalising, classifying, policy, confirmations, budgets,
//! idempotency, audit — is made in `b24_guard::gate`; nothing here decides anything.
//!
//! Exit codes for the gate's errors: a refusal, an unreadable batch, a policy that does not
//! parse and an audit record that cannot be written are all refusals (4); a malformed method
//! name or a bad request is usage (2); a failing guard store (disk full, database locked) is a
//! local-state failure (8); portal errors keep the library's classification.

use std::sync::{Arc, LazyLock};

use b24_guard::audit::AuditLog;
use b24_guard::gate::{Gate, GateError, Origin, PortalSlot};
use b24_guard::sources::{self, CallerInputs, CallerLayer, OperatorPaths};

use crate::exit::{self, Exit};
use crate::globals::Globals;

/// One client per process, shared by the gate and the commands that talk to the portal
/// outside it (doctor, auth).
pub static CLIENT: LazyLock<Arc<tokio::sync::OnceCell<b24::Client>>> =
    LazyLock::new(|| Arc::new(tokio::sync::OnceCell::new()));

/// One pool to the cluster store (write budget) per process, for the same reason.
static PG: LazyLock<Arc<tokio::sync::OnceCell<b24::pg::PgStore>>> =
    LazyLock::new(|| Arc::new(tokio::sync::OnceCell::new()));

/// Everything the caller contributed to the policy: flags and the process environment, the
/// `--env-file`, the profile, and the config dir's `policy.toml` — each only narrows.
fn caller_inputs(g: &Globals) -> anyhow::Result<CallerInputs> {
    let vars = g.caller_vars()?;
    let mut extra = Vec::new();
    for (source, map) in vars {
        let p = sources::agent_from_vars(&source, |k| map.get(k).cloned())
            .map_err(|e| Exit::new(exit::POLICY, format!("refused: {e}")))?;
        if let Some(policy) = p {
            extra.push(CallerLayer { source, policy });
        }
    }
    Ok(CallerInputs {
        flags: g.policy.agent(),
        extra,
        config_dir_policy: Some(g.config_dir().join("policy.toml")),
    })
}

/// The resolved policy (operator files from their fixed places + the caller's layers).
pub fn resolve(g: &Globals) -> anyhow::Result<sources::Resolved> {
    let caller = caller_inputs(g)?;
    sources::resolve(&OperatorPaths::fixed(), &caller, &g.state_dir()).map_err(|e| {
        Exit::new(
            exit::POLICY,
            format!("refused: the policy cannot be read, so every call is refused until it is fixed: {e}"),
        )
    })
}

/// The portal side of a gate: the process's shared client, and with `--portal` a check
/// before each call that the installation is still there.
fn slot(g: &Globals, config: Result<b24::Config, String>) -> PortalSlot {
    let s = PortalSlot::new(config, CLIENT.clone()).with_pg_cell(PG.clone());
    if g.portal.is_some() {
        s.with_still_allowed(crate::cmd::portals::still_installed())
    } else {
        s
    }
}

/// The gate for this process.
pub fn gate(g: &Globals, origin: Origin) -> anyhow::Result<Gate> {
    let resolved = resolve(g)?;
    let config = g.config().map_err(|e| format!("{e:#}"));
    Ok(Gate::new(resolved, slot(g, config), origin))
}

/// The gate acting for an authenticated MCP client (`b24 mcp --http`): the client's policy
/// file narrows the resolved policy (a file that cannot be read refuses every call), and the
/// gate names the client in audit records and counts its writes in its own budget.
pub fn gate_for_client(
    g: &Globals,
    origin: Origin,
    client: &b24_guard::clients::McpClient,
) -> anyhow::Result<Gate> {
    let mut resolved = resolve(g)?;
    client.narrow(&mut resolved).map_err(|e| {
        Exit::new(
            exit::POLICY,
            format!("refused: the policy of MCP client {:?} cannot be read, so its calls are refused until it is fixed: {e}", client.name),
        )
    })?;
    let config = g.config().map_err(|e| format!("{e:#}"));
    Ok(Gate::new(resolved, slot(g, config), origin).with_client(&client.name))
}

/// A gate error as an exit code and message.
pub fn gate_error(e: GateError) -> anyhow::Error {
    let code = match &e {
        GateError::Client(_) => None,
        GateError::Refused(_)
        | GateError::Unreadable(_)
        | GateError::Policy(_)
        | GateError::Audit(_) => Some(exit::POLICY),
        GateError::Malformed(_) | GateError::Invalid(_) | GateError::Config(_) => Some(exit::USAGE),
        _ => Some(exit::INTERNAL),
    };
    match (code, e) {
        (None, GateError::Client(b)) => anyhow::Error::new(b),
        (code, e) => Exit::new(code.unwrap_or(exit::INTERNAL), e.to_string()),
    }
}

/// The audit log as `b24 audit` sees it (the same place the gate writes to).
pub struct Guard {
    pub audit: AuditLog,
}

impl Guard {
    pub fn from_globals(g: &Globals) -> anyhow::Result<Guard> {
        let resolved = resolve(g)?;
        Ok(Guard {
            audit: AuditLog::new(b24_guard::gate::audit_path(&resolved.guard_dir)),
        })
    }
}
