//! Plans: record a call now, apply it once later.
//!
//! A plan row's `tag` is HMAC-SHA256 (plan key) over everything that decides what apply sends
//! and whether it may: id, portal, method, api, canonical params, their hash, risk, creation
//! and expiry. Any edit of those in the database makes apply refuse the plan. Claiming a plan
//! writes a row to `plan_ledger` in the same transaction; a plan with a ledger row is never
//! claimed again, whatever its `state` column or idempotency row say. The ledger row is only
//! removed by [`GuardStore::release_plan`], which the gate calls when it refused the call
//! before sending anything (a missing confirmation), so the plan stays usable.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::{GuardStore, call_hash, canonical, db_err, now};
use crate::GuardError;
use crate::keys::Purpose;

/// A recorded plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub id: String,
    pub method: String,
    pub params: Value,
    pub api: String,
    pub risk: String,
    pub hash: String,
    pub created_at: f64,
    pub expires_at: f64,
    pub state: String,
    /// The portal identity the plan was recorded for.
    pub portal: String,
    /// When the apply's outcome was unknown: what `b24 settle` found later (outcome, when,
    /// how, the call it settled). Not covered by the tag: it is shown, never acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<Value>,
    #[serde(skip)]
    tag: String,
    #[serde(skip)]
    params_text: String,
}

/// Why a plan cannot be applied (old, coarse form; see [`PlanDenied`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanRefusal {
    NotFound,
    Expired,
    Altered,
    AlreadyApplied,
}

/// Why a plan cannot be applied. `Display` is a sentence for the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanDenied {
    #[error("no such plan")]
    NotFound,
    #[error("the plan expired")]
    Expired,
    #[error(
        "the plan was altered after it was recorded (its integrity tag does not match the stored method, params, portal, risk or times)"
    )]
    Altered,
    #[error(
        "the plan has no integrity tag (recorded by an older b24, or its tag was removed); record it again"
    )]
    Untagged,
    #[error(
        "the plan was recorded for another portal ({plan_portal}); record it again for this one"
    )]
    OtherPortal { plan_portal: String },
    #[error("the plan was already applied (a plan runs once; its ledger entry is at {claimed_at})")]
    AlreadyApplied { claimed_at: String },
}

impl PlanDenied {
    /// The old coarse reason.
    pub fn coarse(&self) -> PlanRefusal {
        match self {
            PlanDenied::NotFound => PlanRefusal::NotFound,
            PlanDenied::Expired => PlanRefusal::Expired,
            PlanDenied::AlreadyApplied { .. } => PlanRefusal::AlreadyApplied,
            PlanDenied::Altered | PlanDenied::Untagged | PlanDenied::OtherPortal { .. } => {
                PlanRefusal::Altered
            }
        }
    }
}

/// `pl_` + 12 hex digits of time (ids sort by creation) + 8 random hex digits. Not a cut of
/// a v7 UUID: its tail is a per-process counter, so two plans made in the same millisecond
/// would share a 20-digit prefix.
fn plan_id() -> String {
    let t = uuid::Uuid::now_v7().simple().to_string();
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("pl_{}{}", &t[..12], &r[..8])
}

fn f64_bytes(x: f64) -> [u8; 8] {
    x.to_bits().to_be_bytes()
}

/// The fields a plan's tag covers, in order. One list for making and for checking the tag,
/// so a field added to one can never be missed by the other.
fn plan_tag_parts<R>(p: &Plan, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    f(&[
        p.id.as_bytes(),
        p.portal.as_bytes(),
        p.method.as_bytes(),
        p.api.as_bytes(),
        p.params_text.as_bytes(),
        p.hash.as_bytes(),
        p.risk.as_bytes(),
        &f64_bytes(p.created_at),
        &f64_bytes(p.expires_at),
    ])
}

impl GuardStore {
    fn plan_tag(&self, p: &Plan) -> String {
        plan_tag_parts(p, |parts| self.key.tag(Purpose::PlanTag, parts))
    }

    /// Record a plan for this store's portal, tagged.
    pub fn create_plan(
        &self,
        method: &str,
        params: &Value,
        api: &str,
        risk: &str,
        ttl_secs: f64,
    ) -> Result<Plan, GuardError> {
        let t = now();
        let mut plan = Plan {
            id: plan_id(),
            method: method.to_string(),
            params: params.clone(),
            api: api.to_string(),
            risk: risk.to_string(),
            hash: call_hash(method, params),
            created_at: t,
            expires_at: t + ttl_secs,
            state: "open".into(),
            portal: self.portal.clone(),
            settlement: None,
            tag: String::new(),
            params_text: canonical(params),
        };
        plan.tag = self.plan_tag(&plan);
        self.conn()
            .execute(
                "INSERT INTO plans (id, method, params, api, risk, hash, created_at, expires_at, state, portal, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open', ?9, ?10)",
                params![
                    plan.id,
                    plan.method,
                    plan.params_text,
                    plan.api,
                    plan.risk,
                    plan.hash,
                    plan.created_at,
                    plan.expires_at,
                    plan.portal,
                    plan.tag
                ],
            )
            .map_err(db_err)?;
        Ok(plan)
    }

    fn read_plan(conn: &rusqlite::Connection, id: &str) -> Result<Option<Plan>, GuardError> {
        conn.query_row(
            "SELECT id, method, params, api, risk, hash, created_at, expires_at, state, portal, tag, settlement FROM plans WHERE id = ?1",
            [id],
            |r| {
                let params_text: String = r.get(2)?;
                let settlement: String = r.get(11)?;
                Ok(Plan {
                    id: r.get(0)?,
                    method: r.get(1)?,
                    params: serde_json::from_str(&params_text).unwrap_or(Value::Null),
                    api: r.get(3)?,
                    risk: r.get(4)?,
                    hash: r.get(5)?,
                    created_at: r.get(6)?,
                    expires_at: r.get(7)?,
                    state: r.get(8)?,
                    portal: r.get(9)?,
                    tag: r.get(10)?,
                    settlement: serde_json::from_str(&settlement).ok(),
                    params_text,
                })
            },
        )
        .optional()
        .map_err(db_err)
    }

    /// A plan as stored (unchecked: for showing; [`GuardStore::claim`] checks).
    pub fn get_plan(&self, id: &str) -> Result<Option<Plan>, GuardError> {
        Self::read_plan(&self.conn(), id)
    }

    /// The plans recorded for this store's portal, newest first, at most `limit` (unchecked,
    /// like [`GuardStore::get_plan`]: for showing).
    pub fn list_plans(&self, limit: usize) -> Result<Vec<Plan>, GuardError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id FROM plans WHERE portal = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = st
            .query_map(params![self.portal, limit], |r| r.get(0))
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = Self::read_plan(&conn, &id)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Whether a stored plan is intact: its tag matches and its params are what was hashed.
    fn plan_problem(&self, plan: &Plan) -> Option<PlanDenied> {
        if plan.tag.is_empty() {
            return Some(PlanDenied::Untagged);
        }
        let tag_ok = plan_tag_parts(plan, |parts| {
            self.key.check(Purpose::PlanTag, parts, &plan.tag)
        });
        if !tag_ok
            || plan.params.is_null()
            || canonical(&plan.params) != plan.params_text
            || call_hash(&plan.method, &plan.params) != plan.hash
        {
            return Some(PlanDenied::Altered);
        }
        if plan.portal != self.portal {
            return Some(PlanDenied::OtherPortal {
                plan_portal: plan.portal.clone(),
            });
        }
        None
    }

    /// Claim a plan for applying: checks its tag, portal, ledger and expiry, then marks it
    /// `applying` and writes its ledger row, all in one `BEGIN IMMEDIATE` transaction (of two
    /// concurrent applies only one wins). After a claim the plan is never claimed again unless
    /// [`GuardStore::release_plan`] gives it back.
    pub fn claim(&self, id: &str) -> Result<Result<Plan, PlanDenied>, GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let Some(plan) = Self::read_plan(&tx, id)? else {
            return Ok(Err(PlanDenied::NotFound));
        };
        if let Some(why) = self.plan_problem(&plan) {
            return Ok(Err(why));
        }
        let ledger: Option<f64> = tx
            .query_row(
                "SELECT claimed_at FROM plan_ledger WHERE plan_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(at) = ledger {
            let claimed_at = jiff::Timestamp::from_millisecond((at * 1000.0) as i64)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| at.to_string());
            return Ok(Err(PlanDenied::AlreadyApplied { claimed_at }));
        }
        if plan.state != "open" {
            return Ok(Err(PlanDenied::AlreadyApplied {
                claimed_at: format!("unknown; state {}", plan.state),
            }));
        }
        let t = now();
        if plan.expires_at < t {
            return Ok(Err(PlanDenied::Expired));
        }
        tx.execute(
            "UPDATE plans SET state = 'applying' WHERE id = ?1 AND state = 'open'",
            [id],
        )
        .map_err(db_err)?;
        let mac = self.key.tag(
            Purpose::PlanLedger,
            &[id.as_bytes(), self.portal.as_bytes(), &f64_bytes(t)],
        );
        tx.execute(
            "INSERT INTO plan_ledger (plan_id, portal, claimed_at, outcome, mac) VALUES (?1, ?2, ?3, 'claimed', ?4)",
            params![id, self.portal, t, mac],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Ok(plan))
    }

    /// Claim a plan (old signature, coarse reasons).
    pub fn claim_plan(&self, id: &str) -> Result<Result<Plan, PlanRefusal>, GuardError> {
        Ok(self.claim(id)?.map_err(|d| d.coarse()))
    }

    /// Give a claimed plan back (state `open`, ledger row removed). Only for a call refused
    /// before anything was sent; after a send use [`GuardStore::finish_plan`].
    pub fn release_plan(&self, id: &str) -> Result<(), GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute("DELETE FROM plan_ledger WHERE plan_id = ?1", [id])
            .map_err(db_err)?;
        tx.execute(
            "UPDATE plans SET state = 'open' WHERE id = ?1 AND state = 'applying'",
            [id],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Record how an applied plan ended (`applied`, `failed`, `unknown`). `open` (old callers'
    /// way of saying "refused before sending") releases the plan.
    pub fn finish_plan(&self, id: &str, state: &str) -> Result<(), GuardError> {
        if state == "open" {
            return self.release_plan(id);
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute(
            "UPDATE plans SET state = ?2 WHERE id = ?1",
            params![id, state],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE plan_ledger SET outcome = ?2 WHERE plan_id = ?1",
            params![id, state],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Record what `b24 settle` found about an applied plan whose outcome was unknown: `state`
    /// becomes `applied` or `failed` when the settlement knows (`None` leaves it), and the
    /// settlement is kept for `b24 plan show`. Only a plan still `unknown` (or `applying`: its
    /// process ended mid-call) moves; one already settled keeps its state. The plan may be
    /// this store's portal's or one of its MCP clients' (`PORTAL#mcp:NAME`): the settle runs
    /// for the portal and the audit record that names the plan was checked under the guard key.
    /// `Ok(false)`: no such plan of this portal.
    pub fn settle_plan(
        &self,
        id: &str,
        state: Option<&str>,
        settlement: &Value,
    ) -> Result<bool, GuardError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let portal: Option<String> = tx
            .query_row("SELECT portal FROM plans WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        let ours = portal.is_some_and(|p| {
            p == self.portal
                || p.strip_prefix(self.portal.as_str())
                    .is_some_and(|rest| rest.starts_with("#mcp:"))
        });
        if !ours {
            return Ok(false);
        }
        let n = tx
            .execute(
                "UPDATE plans SET settlement = ?2 WHERE id = ?1 AND state IN ('unknown', 'applying')",
                params![id, settlement.to_string()],
            )
            .map_err(db_err)?;
        if let (Some(state), 1) = (state, n) {
            tx.execute(
                "UPDATE plans SET state = ?2 WHERE id = ?1",
                params![id, state],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE plan_ledger SET outcome = ?2 WHERE plan_id = ?1",
                params![id, state],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }
}
