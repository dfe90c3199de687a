//! Everything the portal remembers: records, tokens, the bucket, operating baskets, events,
//! counters and the request log. One mutex guards it; calls are short and CPU-bound.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Map, Value, json};

use crate::SandboxConfig;
use crate::crm::{Kind, Table};
use crate::faults::FaultSpec;

/// One request as the portal saw it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoggedRequest {
    pub seq: u64,
    /// REST method (lower case), or `oauth/token`, `oauth/authorize`.
    pub method: String,
    /// `webhook`, `oauth` or `none`.
    pub auth: String,
    pub status: u16,
    pub v3: bool,
    /// Unix time (sandbox clock).
    pub ts: f64,
    /// The sub-methods of a batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<String>,
}

/// Counters (served at `/_sandbox/stats`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// REST requests received (`/rest/...`).
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub count_503: u64,
    pub count_429: u64,
    /// `OPERATION_TIME_LIMIT` answers, whole calls and commands inside a batch alike.
    #[serde(default)]
    pub operation_time_limit: u64,
    /// Highest operating time (seconds in the window) each method reached, per credential
    /// summed into one figure per method name.
    #[serde(default)]
    pub max_operating: BTreeMap<String, f64>,
    /// Operating seconds billed per method in total (a benchmark's floor is this total over
    /// the budget's rate, limit ÷ window).
    #[serde(default)]
    pub operating_billed: BTreeMap<String, f64>,
    /// Successful refresh_token grants.
    pub refreshes: u64,
    /// authorization_code grants.
    pub code_exchanges: u64,
    /// Highest bucket level reached (requests).
    pub max_bucket_level: f64,
    pub bucket_capacity: f64,
    /// Requests per method (batch sub-commands counted under their own names too).
    pub methods: BTreeMap<String, u64>,
    pub offline_queue_depth: u64,
    pub online_delivered: u64,
    pub online_failed: u64,
    pub faults_injected: u64,
}

#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub expires_at: f64,
    pub user_id: u64,
    /// Revoked (app reinstalled or access withdrawn): answers `invalid_token`.
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub id: u64,
    pub event: String,
    pub handler: String,
    pub auth_type: u64,
    pub offline: bool,
    pub connector: String,
    /// `options[minTimeout]` of an `ONOFFLINEEVENT` binding: at most one notification per
    /// this many seconds; 0 = one per request that queued something.
    pub min_timeout: f64,
}

#[derive(Debug, Clone)]
pub struct OfflineRow {
    pub id: u64,
    pub ts: f64,
    pub event: String,
    pub data: Value,
    pub message_id: String,
    pub process_id: Option<String>,
    pub error: bool,
    pub connector: String,
}

pub struct State {
    pub cfg: SandboxConfig,
    pub base_url: String,
    pub domain: String,
    pub member_id: String,
    pub application_token: String,
    pub webhook_code: String,
    pub client_id: String,
    pub client_secret: String,
    pub access: HashMap<String, TokenInfo>,
    pub refresh: HashMap<String, u64>,
    pub codes: HashMap<String, f64>,
    pub rng: StdRng,
    pub fault_rng: StdRng,
    pub clock_offset: f64,
    frozen_at: Option<f64>,
    bucket_level: f64,
    bucket_at: f64,
    /// (credential, method) → one-minute baskets (start, seconds).
    pub operating: HashMap<(String, String), VecDeque<(f64, f64)>>,
    /// (credential, method) → calls still running under realistic timing (finish, seconds).
    pub in_flight: HashMap<(String, String), Vec<(f64, f64)>>,
    pub tables: HashMap<Kind, Table>,
    pub bindings: Vec<Binding>,
    pub next_binding: u64,
    pub offline: Vec<OfflineRow>,
    pub next_offline: u64,
    /// The current request queued or merged an offline row (an `ONOFFLINEEVENT` is due).
    pub offline_touched: bool,
    /// `ONOFFLINEEVENT` binding id → when it was last notified.
    pub offline_notified: HashMap<u64, f64>,
    pub tasks: BTreeMap<u64, Map<String, Value>>,
    pub next_task: u64,
    /// (credential, method, key) → (body hash, stored response, stored at).
    pub idempotency: HashMap<(String, String, String), (String, Value, f64)>,
    pub stats_: Stats,
    pub log: Vec<LoggedRequest>,
    pub seq: u64,
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl State {
    pub fn new(cfg: SandboxConfig, base_url: String) -> State {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let fault_rng =
            StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
        let mut token = |n: usize| -> String {
            const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            (0..n)
                .map(|_| A[rng.random_range(0..A.len())] as char)
                .collect()
        };
        let webhook_code = token(16);
        let client_id = format!("local.{}.{}", token(13), token(8));
        let client_secret = token(50);
        let application_token = token(32);
        let member_id: String = token(32)
            .chars()
            .map(|c| char::from_digit((c as u32) % 16, 16).unwrap_or('0'))
            .collect();
        let domain = base_url
            .split("://")
            .nth(1)
            .unwrap_or("127.0.0.1")
            .to_string();
        let mut st = State {
            cfg,
            base_url,
            domain,
            member_id,
            application_token,
            webhook_code,
            client_id,
            client_secret,
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            rng,
            fault_rng,
            clock_offset: 0.0,
            frozen_at: None,
            bucket_level: 0.0,
            bucket_at: 0.0,
            operating: HashMap::new(),
            in_flight: HashMap::new(),
            tables: HashMap::new(),
            bindings: Vec::new(),
            next_binding: 0,
            offline: Vec::new(),
            next_offline: 0,
            offline_touched: false,
            offline_notified: HashMap::new(),
            tasks: BTreeMap::new(),
            next_task: 0,
            idempotency: HashMap::new(),
            stats_: Stats::default(),
            log: Vec::new(),
            seq: 0,
        };
        st.stats_.bucket_capacity = st.cfg.plan.bucket().0;
        if st.cfg.manual_clock {
            st.frozen_at = Some(now_unix());
        }
        for k in [Kind::Lead, Kind::Deal, Kind::Contact, Kind::Company] {
            st.tables.insert(k, Table::default());
        }
        st
    }

    pub fn now(&self) -> f64 {
        match self.frozen_at {
            Some(t) => t + self.clock_offset,
            None => now_unix() + self.clock_offset,
        }
    }

    pub fn random_token(&mut self, n: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| A[self.rng.random_range(0..A.len())] as char)
            .collect()
    }

    /// Issue a fresh access/refresh pair for `user_id`.
    pub fn issue_pair(&mut self, user_id: u64) -> (String, String) {
        let a = self.random_token(32);
        let r = self.random_token(32);
        let exp = self.now() + self.cfg.access_token_ttl.as_secs_f64();
        self.access.insert(
            a.clone(),
            TokenInfo {
                expires_at: exp,
                user_id,
                revoked: false,
            },
        );
        self.refresh.insert(r.clone(), user_id);
        (a, r)
    }

    pub fn token_json(&self, access: &str, refresh: &str, user_id: u64) -> Value {
        let ttl = self.cfg.access_token_ttl.as_secs();
        json!({
            "access_token": access,
            "refresh_token": refresh,
            "expires": (self.now() as u64) + ttl,
            "expires_in": ttl,
            "client_endpoint": format!("{}/rest/", self.base_url),
            "server_endpoint": format!("{}/rest/", self.base_url),
            "domain": "oauth.bitrix.info",
            "member_id": self.member_id,
            "scope": self.app_scope_text(),
            "status": "L",
            "user_id": user_id,
        })
    }

    /// The app's scopes as the OAuth server prints them (comma-separated).
    pub fn app_scope_text(&self) -> String {
        match &self.cfg.app_scopes {
            Some(s) => s.join(","),
            None => "crm,user,task,basic,placement,entity,im,bizproc,disk,department".into(),
        }
    }

    /// Revoke every access and refresh token issued so far: calls answer 401 `invalid_token`
    /// and refreshing fails with `invalid_grant`, as after an app is reinstalled.
    pub fn revoke_tokens(&mut self) {
        for t in self.access.values_mut() {
            t.revoked = true;
        }
        self.refresh.clear();
    }

    pub fn expire_tokens(&mut self) {
        for t in self.access.values_mut() {
            t.expires_at = 0.0;
        }
    }

    pub fn set_faults(&mut self, spec: FaultSpec) {
        self.cfg.faults = spec;
    }

    pub fn reset_stats(&mut self) {
        let cap = self.stats_.bucket_capacity;
        self.stats_ = Stats {
            bucket_capacity: cap,
            ..Default::default()
        };
        self.log.clear();
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats_.clone();
        s.offline_queue_depth = self.offline.len() as u64;
        s
    }

    /// The leaky bucket: +1 per request, drains continuously; a request that would take the
    /// counter above the capacity is refused (and does not count).
    pub fn bucket_admit(&mut self) -> bool {
        if !self.cfg.limits {
            return true;
        }
        let (cap, drain) = self.cfg.plan.bucket();
        let now = self.now();
        self.bucket_level = (self.bucket_level - (now - self.bucket_at) * drain).max(0.0);
        self.bucket_at = now;
        if self.bucket_level + 1.0 > cap + 1e-9 {
            return false;
        }
        self.bucket_level += 1.0;
        if self.bucket_level > self.stats_.max_bucket_level {
            self.stats_.max_bucket_level = self.bucket_level;
        }
        true
    }

    /// Operating seconds used by (credential, method) over the last ten minutes, and when the
    /// oldest basket drops out.
    pub fn operating(&mut self, cred: &str, method: &str) -> (f64, Option<f64>) {
        let now = self.now();
        self.operating_at(cred, method, now)
    }

    /// The operating time as it will stand at `at` (≥ now): baskets still inside the window
    /// then, plus calls in flight that will have finished by then. A call's time counts from
    /// when it finishes, so calls started together do not see each other, as on a portal.
    pub fn operating_at(&mut self, cred: &str, method: &str, at: f64) -> (f64, Option<f64>) {
        let now = self.now();
        let key = (cred.to_string(), method.to_string());
        // Calls that have finished move from in-flight into the baskets.
        if let Some(p) = self.in_flight.get_mut(&key) {
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            let due: Vec<(f64, f64)> = p.iter().copied().filter(|(t, _)| *t <= now).collect();
            p.retain(|(t, _)| *t > now);
            for (t, secs) in due {
                self.bill_basket(&key, t, secs);
            }
        }
        let pending: f64 = self
            .in_flight
            .get(&key)
            .map(|p| p.iter().filter(|(t, _)| *t <= at).map(|(_, s)| s).sum())
            .unwrap_or(0.0);
        let first_pending = self
            .in_flight
            .get(&key)
            .and_then(|p| p.iter().map(|(t, _)| *t).find(|t| *t <= at));
        let window = self.window();
        let Some(b) = self.operating.get_mut(&key) else {
            return (pending, first_pending.map(|t| t + window));
        };
        while b.front().map(|(s, _)| now - s >= window).unwrap_or(false) {
            b.pop_front();
        }
        let live = || b.iter().filter(|(s, _)| at - s < window);
        let reset = live().next().map(|(s, _)| s + window);
        (
            live().map(|(_, x)| x).sum::<f64>() + pending,
            reset.or(first_pending.map(|t| t + window)),
        )
    }

    pub fn bill(&mut self, cred: &str, method: &str, secs: f64) {
        let now = self.now();
        self.bill_basket(&(cred.to_string(), method.to_string()), now, secs);
    }

    /// Bill a call that finishes at `at` (realistic timing): it counts from then on.
    pub fn bill_at(&mut self, cred: &str, method: &str, secs: f64, at: f64) {
        self.in_flight
            .entry((cred.to_string(), method.to_string()))
            .or_default()
            .push((at, secs));
    }

    /// The operating-time window (docs/protocol.md §7.3: ten minutes on a portal; shorter with
    /// `--operating-window` so tests and benchmarks see whole windows in seconds).
    pub fn window(&self) -> f64 {
        let w = self.cfg.operating_window_secs;
        if w.is_finite() && w > 0.0 { w } else { 600.0 }
    }

    /// Remember the highest operating time a method reached (served in the stats, so a test
    /// can show a paced client stayed under the limit).
    pub fn note_operating(&mut self, method: &str, used: f64) {
        let m = self
            .stats_
            .max_operating
            .entry(method.to_string())
            .or_default();
        if used > *m {
            *m = used;
        }
    }

    fn bill_basket(&mut self, key: &(String, String), at: f64, secs: f64) {
        // Ten baskets per window, as the portal's ten one-minute baskets in ten minutes.
        let basket = self.window() / 10.0;
        let b = self.operating.entry(key.clone()).or_default();
        match b.back_mut() {
            Some((start, total)) if at - *start < basket => *total += secs,
            Some((start, _)) if at < *start => {
                // Out of order (a shorter call finished first): keep baskets ordered.
                let start = *start;
                b.push_back((start, secs));
            }
            _ => b.push_back((at, secs)),
        }
    }

    pub fn fault_draw(&mut self) -> (f64, f64) {
        (
            self.fault_rng.random::<f64>(),
            self.fault_rng.random::<f64>(),
        )
    }

    pub fn record(&mut self, method: &str, auth: &str, status: u16, v3: bool, batch: Vec<String>) {
        self.seq += 1;
        self.stats_.requests += 1;
        *self.stats_.by_status.entry(status).or_default() += 1;
        match status {
            503 => self.stats_.count_503 += 1,
            429 => self.stats_.count_429 += 1,
            _ => {}
        }
        *self.stats_.methods.entry(method.to_string()).or_default() += 1;
        for m in &batch {
            *self.stats_.methods.entry(m.clone()).or_default() += 1;
        }
        if self.log.len() < 500_000 {
            let ts = self.now();
            self.log.push(LoggedRequest {
                seq: self.seq,
                method: method.into(),
                auth: auth.into(),
                status,
                v3,
                ts,
                batch,
            });
        }
    }

    /// Create `n` realistic leads (fast: 100,000 in well under a few seconds).
    pub fn seed_leads(&mut self, n: usize) {
        const FIRST: &[&str] = &[
            "Anna", "Boris", "Clara", "Dmitry", "Elena", "Fedor", "Galina", "Igor", "Julia",
            "Kirill", "Lena", "Maxim",
        ];
        const LAST: &[&str] = &[
            "Ivanova",
            "Petrov",
            "Smirnova",
            "Kuznetsov",
            "Popova",
            "Sokolov",
            "Lebedeva",
            "Kozlov",
            "Novikova",
            "Morozov",
        ];
        const STATUS: &[&str] = &["NEW", "IN_PROCESS", "PROCESSED", "JUNK", "CONVERTED"];
        const SOURCE: &[&str] = &[
            "CALL",
            "EMAIL",
            "WEB",
            "ADVERTISING",
            "PARTNER",
            "RECOMMENDATION",
            "TRADE_SHOW",
            "WEBFORM",
        ];
        let base = self.now() - 86_400.0 * 365.0;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let f = FIRST[self.rng.random_range(0..FIRST.len())];
            let l = LAST[self.rng.random_range(0..LAST.len())];
            let opp = self.rng.random_range(0..500_000) as f64 / 100.0;
            let ts = base + (i as f64) * (86_400.0 * 365.0 / (n.max(1) as f64));
            let date = iso(ts);
            let mut r = Map::new();
            r.insert("TITLE".into(), Value::String(format!("Lead: {f} {l}")));
            r.insert("NAME".into(), Value::String(f.into()));
            r.insert("LAST_NAME".into(), Value::String(l.into()));
            r.insert(
                "STATUS_ID".into(),
                Value::String(STATUS[self.rng.random_range(0..STATUS.len())].into()),
            );
            r.insert(
                "SOURCE_ID".into(),
                Value::String(SOURCE[self.rng.random_range(0..SOURCE.len())].into()),
            );
            r.insert("OPPORTUNITY".into(), Value::String(format!("{opp:.2}")));
            r.insert("CURRENCY_ID".into(), Value::String("USD".into()));
            r.insert("ASSIGNED_BY_ID".into(), Value::String("1".into()));
            r.insert("OPENED".into(), Value::String("Y".into()));
            r.insert("DATE_CREATE".into(), Value::String(date.clone()));
            r.insert("DATE_MODIFY".into(), Value::String(date));
            r.insert("CREATED_BY_ID".into(), Value::String("1".into()));
            rows.push(r);
        }
        let t = self.tables.get_mut(&Kind::Lead).expect("lead table");
        for mut r in rows {
            let id = t.alloc_id();
            r.insert("ID".into(), Value::String(id.to_string()));
            t.rows.insert(id, r);
        }
    }
}

/// ISO-8601 with offset, as the portal prints dates.
pub fn iso(ts: f64) -> String {
    let secs = ts.floor() as i64;
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
        Err(_) => "1970-01-01T00:00:00+00:00".into(),
    }
}
