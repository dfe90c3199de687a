//! Seeded fault injection: `latency=50ms,rate500=0.01,rate503=0.05,drop=0.01,expire=0.01,timeout=0.01`,
//! plus counted faults that hit the next N writes: `lose_after_write=1` runs the write and then
//! drops the connection before the answer, `hold_after_write=1` runs it and holds the answer
//! until the client gives up. Both are the case b24 must settle: the effect happened, the
//! caller cannot know. (`drop` is the opposite case: the request is lost *before* it runs.)

use std::time::Duration;

/// What can go wrong, and how often.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSpec {
    /// Added to every REST request: (min, max).
    pub latency: Option<(Duration, Duration)>,
    /// Probability of a 500 INTERNAL_SERVER_ERROR instead of running the method.
    pub rate500: f64,
    /// Probability of a 503 QUERY_LIMIT_EXCEEDED (not executed).
    pub rate503: f64,
    /// Probability of closing the connection without an answer (not executed).
    pub drop: f64,
    /// Probability that the presented OAuth token is expired early.
    pub expire: f64,
    /// Probability that the method runs but the answer is held until the client gives up.
    pub timeout: f64,
    /// The next N writes that succeed run, then their answer is lost (connection dropped).
    pub lose_after_write: u32,
    /// The next N writes that succeed run, then their answer is held until the client gives up.
    pub hold_after_write: u32,
}

fn dur(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 0.001)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration `{s}`"))?;
    if !(0.0..=600.0).contains(&(v * mult)) {
        return Err(format!("duration out of range `{s}`"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

impl std::str::FromStr for FaultSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<FaultSpec, String> {
        let mut f = FaultSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault `{part}` must be key=value"))?;
            let prob = || -> Result<f64, String> {
                let p: f64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{k}` needs a probability, got `{v}`"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("`{k}` must be between 0 and 1"));
                }
                Ok(p)
            };
            match k.trim() {
                "latency" => {
                    let (a, b) = match v.split_once("..") {
                        Some((a, b)) => (dur(a)?, dur(b)?),
                        None => (dur(v)?, dur(v)?),
                    };
                    if b < a {
                        return Err("latency range must be min..max".into());
                    }
                    f.latency = Some((a, b));
                }
                "rate500" => f.rate500 = prob()?,
                "rate503" => f.rate503 = prob()?,
                "drop" => f.drop = prob()?,
                "expire" => f.expire = prob()?,
                "timeout" => f.timeout = prob()?,
                "lose_after_write" | "hold_after_write" => {
                    let n: u32 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{k}` needs a count of writes, got `{v}`"))?;
                    if k.trim() == "lose_after_write" {
                        f.lose_after_write = n;
                    } else {
                        f.hold_after_write = n;
                    }
                }
                other => {
                    return Err(format!(
                        "unknown fault `{other}` (latency, rate500, rate503, drop, expire, timeout, lose_after_write, hold_after_write)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// The fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Err500,
    Err503,
    Drop,
    Expire,
    Timeout,
}

impl FaultSpec {
    /// Draw one fault with a uniform number in [0,1).
    pub fn pick(&self, u: f64) -> Fault {
        let mut acc = 0.0;
        for (p, f) in [
            (self.rate500, Fault::Err500),
            (self.rate503, Fault::Err503),
            (self.drop, Fault::Drop),
            (self.expire, Fault::Expire),
            (self.timeout, Fault::Timeout),
        ] {
            acc += p;
            if u < acc {
                return f;
            }
        }
        Fault::None
    }
}

/// Last name segments that only read (for the counted faults, which hit writes only).
const READ_VERBS: &[&str] = &[
    "get", "list", "fields", "current", "search", "count", "info",
];

/// Whether a v2 method name writes, as far as the counted faults care: anything whose last
/// segment is not a read verb (a batch writes when one of its commands does).
pub fn is_write_name(method: &str, batch: &[String]) -> bool {
    let m = method.to_ascii_lowercase();
    if m == "batch" {
        return batch.iter().any(|c| is_write_name(c, &[]));
    }
    let verb = m.rsplit('.').next().unwrap_or("");
    !(READ_VERBS.contains(&verb) || verb.starts_with("get") || verb.starts_with("list"))
}

impl FaultSpec {
    /// After a request ran: whether its answer is now lost (`Drop`) or held (`Timeout`), taking
    /// one from the counted faults. Only writes that succeeded count (`ok`).
    pub fn after_run(&mut self, write: bool, ok: bool) -> Fault {
        if !(write && ok) {
            return Fault::None;
        }
        if self.lose_after_write > 0 {
            self.lose_after_write -= 1;
            return Fault::Drop;
        }
        if self.hold_after_write > 0 {
            self.hold_after_write -= 1;
            return Fault::Timeout;
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let f: FaultSpec = "latency=40ms..60ms,rate503=0.05,rate500=0.01,drop=0.01,expire=0.005"
            .parse()
            .unwrap();
        assert_eq!(
            f.latency,
            Some((Duration::from_millis(40), Duration::from_millis(60)))
        );
        assert_eq!(f.rate503, 0.05);
        assert!("rate503=2".parse::<FaultSpec>().is_err());
        assert!("bogus=1".parse::<FaultSpec>().is_err());
        assert_eq!(f.pick(0.005), Fault::Err500);
        assert_eq!(f.pick(0.03), Fault::Err503);
        assert_eq!(f.pick(0.9), Fault::None);
    }

    #[test]
    fn counted_faults_hit_successful_writes_only() {
        let mut f: FaultSpec = "lose_after_write=1,hold_after_write=1".parse().unwrap();
        assert_eq!(f.after_run(false, true), Fault::None, "reads are never hit");
        assert_eq!(
            f.after_run(true, false),
            Fault::None,
            "failed writes are not"
        );
        assert_eq!(f.after_run(true, true), Fault::Drop);
        assert_eq!(f.after_run(true, true), Fault::Timeout);
        assert_eq!(
            f.after_run(true, true),
            Fault::None,
            "then the portal behaves"
        );
        assert!("lose_after_write=x".parse::<FaultSpec>().is_err());
        assert!(is_write_name("crm.lead.add", &[]));
        assert!(!is_write_name("crm.lead.list", &[]));
        assert!(is_write_name(
            "batch",
            &["crm.lead.get".into(), "crm.lead.delete".into()]
        ));
        assert!(!is_write_name("batch", &["crm.lead.get".into()]));
    }
}
