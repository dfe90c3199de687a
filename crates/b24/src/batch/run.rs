//! Running a [`Batch`]: chunks of at most 50 commands, references, partial failure, retries,
//! and (for long jobs) waiting out the portal's operating-time blocks.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::reply::resolve;
use super::*;

impl Batch {
    /// Run every command; returns `(key, outcome)` in insertion order. Errors building the batch
    /// (unknown references, cycles) become an error outcome for every command, nothing is sent.
    pub async fn run<T: Transport>(&self, transport: &T) -> Vec<(String, Outcome)> {
        self.run_with_progress(transport, |_, _| {}).await
    }

    /// As [`Batch::run`], calling `progress(done, total)` after each request.
    pub async fn run_with_progress<T: Transport>(
        &self,
        transport: &T,
        mut progress: impl FnMut(usize, usize),
    ) -> Vec<(String, Outcome)> {
        let order = match self.order() {
            Ok(o) => o,
            Err(e) => {
                return self
                    .commands
                    .iter()
                    .map(|c| {
                        (
                            c.key.clone(),
                            Outcome::Error {
                                code: "INVALID_BATCH".into(),
                                description: e.to_string(),
                            },
                        )
                    })
                    .collect();
            }
        };
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut queue: std::collections::VecDeque<usize> = order.into();
        let mut unknown_retries: HashMap<usize, u32> = HashMap::new();
        let mut halted: Option<String> = None;
        let total = self.commands.len();
        // Several requests make a long job: wait out operating-time blocks rather than fail.
        let patient = self.patient || total > MAX_COMMANDS;
        let mut blocked_rounds = 0u32;
        while !queue.is_empty() {
            if let Some(why) = &halted {
                for i in queue.drain(..) {
                    outcomes.insert(
                        self.commands[i].key.clone(),
                        Outcome::NotExecuted {
                            reason: why.clone(),
                        },
                    );
                }
                break;
            }
            // Build one request.
            let mut chunk: Vec<(usize, String)> = Vec::new();
            let mut in_chunk: HashSet<&str> = HashSet::new();
            let mut client_failed = false;
            while let Some(&i) = queue.front() {
                if chunk.len() == MAX_COMMANDS {
                    break;
                }
                let c = &self.commands[i];
                let mut text = c.text();
                let mut blocked = false;
                let mut failure: Option<String> = None;
                for r in references(&text) {
                    if in_chunk.contains(r.target.as_str()) {
                        if c.is_write {
                            blocked = true; // run after the referenced command's request
                            break;
                        }
                        continue;
                    }
                    match outcomes.get(&r.target) {
                        Some(Outcome::Ok { result, .. }) => match resolve(result, &r.path) {
                            Some(v) => {
                                text = text.replacen(&r.raw, &query::encode_value(&v), 1);
                            }
                            None => {
                                failure = Some(format!(
                                    "reference {} does not resolve in the result of `{}`",
                                    r.raw, r.target
                                ));
                                break;
                            }
                        },
                        Some(_) => {
                            failure = Some(format!("reference to failed command {}", r.target));
                            break;
                        }
                        None => {
                            // Not run yet and not in this request: cannot happen in topological
                            // order, but never send a literal.
                            blocked = true;
                            break;
                        }
                    }
                }
                if blocked {
                    break;
                }
                queue.pop_front();
                if let Some(description) = failure {
                    outcomes.insert(
                        c.key.clone(),
                        Outcome::Error {
                            code: "REFERENCE_FAILED".into(),
                            description,
                        },
                    );
                    if self.halt {
                        client_failed = true;
                        halted = Some(format!("halted: command {} failed", c.key));
                        break;
                    }
                    continue;
                }
                in_chunk.insert(c.key.as_str());
                chunk.push((i, text));
            }
            if chunk.is_empty() {
                if client_failed || queue.is_empty() {
                    continue;
                }
                // Defensive: nothing could be placed (should be impossible); fail the rest.
                for i in queue.drain(..) {
                    outcomes.insert(
                        self.commands[i].key.clone(),
                        Outcome::NotExecuted {
                            reason: "could not be scheduled".into(),
                        },
                    );
                }
                break;
            }
            let cmd: Map<String, Value> = chunk
                .iter()
                .map(|(i, t)| (self.commands[*i].key.clone(), Value::String(t.clone())))
                .collect();
            let any_write = chunk.iter().any(|(i, _)| self.commands[*i].is_write);
            let reply = if patient {
                transport
                    .send_batch_patient(cmd, self.halt, any_write)
                    .await
            } else {
                transport.send_batch(cmd, self.halt, any_write).await
            };
            match reply {
                Ok(resp) => {
                    let reply = Reply::from_result(resp.result);
                    let mut first_failure: Option<String> = None;
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        let o = reply.outcome(&c.key);
                        if !o.is_ok()
                            && first_failure.is_none()
                            && !matches!(o, Outcome::NotExecuted { .. })
                        {
                            first_failure = Some(c.key.clone());
                        }
                        outcomes.insert(c.key.clone(), o);
                    }
                    if patient && blocked_rounds < MAX_BLOCKED_ROUNDS {
                        let again = self.blocked_in(&chunk, &outcomes);
                        if again.is_empty() {
                            blocked_rounds = 0;
                        } else {
                            // They did not run: send them again. The patient transport waits
                            // until the method's operating-time budget has room.
                            blocked_rounds += 1;
                            for i in &again {
                                outcomes.remove(&self.commands[*i].key);
                            }
                            for i in again.into_iter().rev() {
                                queue.push_front(i);
                            }
                            first_failure = chunk
                                .iter()
                                .map(|(i, _)| &self.commands[*i].key)
                                .find(|k| {
                                    outcomes.get(*k).is_some_and(|o| {
                                        !o.is_ok() && !matches!(o, Outcome::NotExecuted { .. })
                                    })
                                })
                                .cloned();
                        }
                    }
                    // Reads that shared a request with their referenced command: if the
                    // reference did not resolve, the portal ran them on a literal. Discard.
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        if !outcomes.get(&c.key).is_some_and(Outcome::is_ok) {
                            continue;
                        }
                        for r in references(&c.text()) {
                            if !in_chunk.contains(r.target.as_str()) {
                                continue;
                            }
                            let bad = match outcomes.get(&r.target) {
                                Some(Outcome::Ok { result, .. }) => {
                                    resolve(result, &r.path).is_none().then(|| {
                                        format!(
                                            "reference {} does not resolve in the result of `{}`",
                                            r.raw, r.target
                                        )
                                    })
                                }
                                _ => Some(format!("reference to failed command {}", r.target)),
                            };
                            if let Some(description) = bad {
                                outcomes.insert(
                                    c.key.clone(),
                                    Outcome::Error {
                                        code: "REFERENCE_FAILED".into(),
                                        description,
                                    },
                                );
                                break;
                            }
                        }
                    }
                    if self.halt
                        && let Some(k) = first_failure
                    {
                        halted = Some(format!("halted: command {k} failed"));
                    }
                }
                Err(Error::OutcomeUnknown { reason, .. }) => {
                    // Writes may have happened: report, never resend. Reads go back to the
                    // front of the queue (unless they depend on a write of this request).
                    let writes: HashSet<&str> = chunk
                        .iter()
                        .filter(|(i, _)| self.commands[*i].is_write)
                        .map(|(i, _)| self.commands[*i].key.as_str())
                        .collect();
                    let mut again = Vec::new();
                    for (i, _) in &chunk {
                        let c = &self.commands[*i];
                        let n = unknown_retries.entry(*i).or_insert(0);
                        if c.is_write {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Unknown {
                                    reason: reason.clone(),
                                },
                            );
                        } else if c.refs.iter().any(|t| writes.contains(t.as_str())) {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Error {
                                    code: "REFERENCE_FAILED".into(),
                                    description: format!(
                                        "reference to a command whose outcome is unknown ({reason})"
                                    ),
                                },
                            );
                        } else if *n >= UNKNOWN_READ_RETRIES {
                            outcomes.insert(
                                c.key.clone(),
                                Outcome::Error {
                                    code: "TRANSIENT".into(),
                                    description: reason.clone(),
                                },
                            );
                        } else {
                            *n += 1;
                            again.push(*i);
                        }
                    }
                    for i in again.into_iter().rev() {
                        queue.push_front(i);
                    }
                    if self.halt && !writes.is_empty() {
                        halted = Some("halted: a write's outcome is unknown".into());
                    }
                }
                Err(e) => {
                    let class = e.class();
                    let (code, description) = match &e {
                        Error::Api(a) => (a.code.clone(), a.description.clone()),
                        other => (class_code(class).into(), other.to_string()),
                    };
                    for (i, _) in &chunk {
                        outcomes.insert(
                            self.commands[*i].key.clone(),
                            Outcome::Error {
                                code: code.clone(),
                                description: description.clone(),
                            },
                        );
                    }
                    if self.halt
                        || matches!(
                            class,
                            ErrorClass::Reauthorize | ErrorClass::PortalStop | ErrorClass::Usage
                        )
                    {
                        halted = Some(format!("not sent: an earlier request failed ({code})"));
                    }
                }
            }
            progress(outcomes.len(), total);
        }
        self.commands
            .iter()
            .map(|c| {
                let o = outcomes.remove(&c.key).unwrap_or(Outcome::NotExecuted {
                    reason: "not reached".into(),
                });
                (c.key.clone(), o)
            })
            .collect()
    }
}

fn class_code(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "TRANSIENT",
        ErrorClass::Reauthorize => "AUTH",
        ErrorClass::Usage => "USAGE",
        ErrorClass::OutcomeUnknown => "OUTCOME_UNKNOWN",
        _ => "ERROR",
    }
}

/// Requests in a row that meet an operating-time block before a patient batch reports the
/// blocked commands as errors (each resend first waits for the budget's reset).
const MAX_BLOCKED_ROUNDS: u32 = 30;

impl Batch {
    /// The commands of `chunk` to send again after an operating-time block, in chunk order:
    /// the blocked ones, under `halt` the ones the portal then skipped, and reads that shared
    /// the request with a blocked command they reference.
    fn blocked_in(
        &self,
        chunk: &[(usize, String)],
        outcomes: &HashMap<String, Outcome>,
    ) -> Vec<usize> {
        let mut again: Vec<usize> = Vec::new();
        let mut hit = false;
        for (i, _) in chunk {
            match outcomes.get(&self.commands[*i].key) {
                Some(Outcome::Error { code, .. })
                    if code.eq_ignore_ascii_case("OPERATION_TIME_LIMIT") =>
                {
                    hit = true;
                    again.push(*i);
                }
                Some(Outcome::NotExecuted { .. }) if hit => again.push(*i),
                _ => {}
            }
        }
        if !hit {
            return Vec::new();
        }
        let keys: HashSet<&str> = again
            .iter()
            .map(|i| self.commands[*i].key.as_str())
            .collect();
        for (i, _) in chunk {
            let c = &self.commands[*i];
            if !again.contains(i) && c.refs.iter().any(|t| keys.contains(t.as_str())) {
                again.push(*i);
            }
        }
        let pos = |i: &usize| chunk.iter().position(|(j, _)| j == i).unwrap_or(usize::MAX);
        again.sort_by_key(pos);
        again
    }
}
