//! The gate in process: policies resolved from operator files in a temp dir (standing in for
//! `/etc/b24/policy.toml` and the account's home), a [`Gate`] over an in-process sandbox, and
//! the attacks of issue 12 run straight through `Gate::call` / `batch` / `plan` / `apply` /
//! `export`. Every case asserts from the sandbox's own counters what reached the portal.
//!
//! The fixtures are here; the attacks are in `gate/`, one file per concern.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use b24::export::ExportOptions;
use b24_guard::gate::{
    Answer, ApplyRequest, BatchCommandSpec, BatchRequest, CallOutcome, CallRequest, ExportRequest,
    Gate, GateError, NoPerson, Origin, Person, PlanRequest, PortalSlot,
};
use b24_guard::policy::AgentPolicy;
use b24_guard::sources::{CallerInputs, OperatorPaths, resolve};
use b24_sandbox::{Sandbox, SandboxConfig};
use futures::future::BoxFuture;
use serde_json::{Value, json};

/// Operator files in a temp dir, and the caller's state dirs beside them.
struct World {
    dir: tempfile::TempDir,
    paths: OperatorPaths,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let paths = OperatorPaths {
            system: dir.path().join("etc/b24/policy.toml"),
            user: Some(dir.path().join("home/.config/b24/policy.toml")),
            user_state: Some(dir.path().join("home/.local/state/b24")),
        };
        World { dir, paths }
    }

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn system(&self, text: &str) {
        World::write(&self.paths.system, text);
    }

    fn user(&self, text: &str) {
        World::write(self.paths.user.as_ref().unwrap(), text);
    }

    fn caller_state(&self, name: &str) -> PathBuf {
        self.dir.path().join("caller").join(name)
    }

    /// A gate over `sb` with the caller's inputs and state dir `state`.
    fn gate(&self, sb: &Sandbox, caller: &CallerInputs, state: &str, origin: Origin) -> Gate {
        let state = self.caller_state(state);
        let resolved = resolve(&self.paths, caller, &state).expect("policy resolves");
        let url = sb.info().webhook_url.clone();
        let cfg = b24::Config::from_lookup(
            &|k: &str| (k == "B24_WEBHOOK_URL").then(|| url.clone()),
            state.join("client"),
        )
        .expect("config");
        let slot = PortalSlot::new(Ok(cfg), Arc::new(tokio::sync::OnceCell::new()));
        Gate::new(resolved, slot, origin)
    }
}

async fn sandbox() -> Sandbox {
    b24_sandbox::start(SandboxConfig {
        seed_leads: 10,
        ..Default::default()
    })
    .await
    .expect("sandbox starts")
}

fn calls(sb: &Sandbox, method: &str) -> u64 {
    sb.stats().methods.get(method).copied().unwrap_or(0)
}

/// A person who gives a fixed answer and counts the questions.
struct Says {
    answer: Answer,
    can_ask: bool,
    asked: AtomicUsize,
}

impl Says {
    fn new(answer: Answer) -> Says {
        Says {
            can_ask: true,
            answer,
            asked: AtomicUsize::new(0),
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Person for Says {
    fn can_ask(&self) -> bool {
        self.can_ask
    }

    fn ask(&self, _question: String) -> BoxFuture<'_, Answer> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let a = self.answer.clone();
        Box::pin(async move { a })
    }
}

/// A call with every confirmation the caller can give itself.
fn confirmed(method: &str, params: Value) -> CallRequest {
    CallRequest {
        method: method.into(),
        params,
        confirm_write: true,
        confirm_destructive: true,
        ..Default::default()
    }
}

fn is_refusal(e: &GateError) -> bool {
    matches!(
        e,
        GateError::Refused(_) | GateError::Malformed(_) | GateError::Unreadable(_)
    )
}

mod audit;
mod budget;
mod confirmation;
mod operator;
mod strict_params;
