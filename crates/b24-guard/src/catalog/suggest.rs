//! "Did you mean": the catalog names closest to a name the catalog does not know, for the
//! refusal message of an unknown method. It runs once per refused call over ~1,700 names, so it
//! is a plain edit distance with a length cut-off (well under a millisecond), no index.

use super::Catalog;

/// Levenshtein distance over bytes, giving up (returning `limit + 1`) once every path costs
/// more than `limit`.
fn distance(a: &[u8], b: &[u8], limit: usize, row: &mut Vec<usize>) -> usize {
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    row.clear();
    row.extend(0..=b.len());
    for (i, &ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        let mut best = row[0];
        for (j, &cb) in b.iter().enumerate() {
            let up = row[j + 1];
            let cost = usize::from(ca != cb);
            row[j + 1] = (diag + cost).min(up + 1).min(row[j] + 1);
            diag = up;
            best = best.min(row[j + 1]);
        }
        if best > limit {
            return limit + 1;
        }
    }
    row[b.len()]
}

/// Sum of per-segment distances when both names have the same number of segments: ranks
/// `crm.leads.list` (one edit in one segment) above names that differ as much overall but in
/// more places.
fn segment_distance(a: &str, b: &str, row: &mut Vec<usize>) -> usize {
    let (sa, sb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    if sa.len() != sb.len() {
        return usize::MAX;
    }
    sa.iter()
        .zip(&sb)
        .map(|(x, y)| distance(x.as_bytes(), y.as_bytes(), usize::MAX - 1, row))
        .sum()
}

impl Catalog {
    /// Up to `n` catalog names closest to `name` (case-insensitive), closest first. A name
    /// qualifies when it is within a third of the query's length in edits (at least 2), or when
    /// the query is one of its leading segment groups (`crm.lead` → `crm.lead.add`, …). Empty
    /// when nothing is close: a far-fetched suggestion is worse than none.
    pub fn suggest(&self, name: &str, n: usize) -> Vec<&str> {
        let q = name.trim().to_ascii_lowercase();
        if q.is_empty() || n == 0 {
            return Vec::new();
        }
        let limit = (q.len() / 3).max(2);
        let prefix = format!("{q}.");
        let mut row = Vec::with_capacity(64);
        let mut scored: Vec<(usize, usize, &str)> = Vec::new();
        for cand in self.names() {
            let mut d = distance(q.as_bytes(), cand.as_bytes(), limit, &mut row);
            if cand.starts_with(&prefix) {
                d = d.min(limit);
            }
            if d > limit || d == 0 {
                continue;
            }
            let seg = segment_distance(&q, cand, &mut row);
            scored.push((d, seg, cand.as_str()));
        }
        scored.sort();
        scored
            .into_iter()
            .take(n)
            .filter_map(|(_, _, key)| self.get(key).map(|m| m.name.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(name: &str) -> Option<&'static str> {
        Catalog::builtin().suggest(name, 3).first().copied()
    }

    #[test]
    fn suggests_the_intended_method() {
        assert_eq!(first("crm.lead.dlete"), Some("crm.lead.delete"));
        assert_eq!(first("crm.leads.list"), Some("crm.lead.list"));
        assert_eq!(first("CRM.Deal.Updte"), Some("crm.deal.update"));
        assert_eq!(first("tasks.task.lst"), Some("tasks.task.list"));
        assert_eq!(first("user.curent"), Some("user.current"));
        assert_eq!(
            first("crm.dealcategory.stages.list"),
            Some("crm.dealcategory.stage.list")
        );
        assert_eq!(
            first("imconnector.send.message"),
            Some("imconnector.send.messages")
        );
        assert_eq!(
            first("crm.deal.categroy.list"),
            Some("crm.dealcategory.list")
        );
        assert_eq!(
            first("disk.file.getexternallnk"),
            Some("disk.file.getExternalLink")
        );
        // Original case is returned for mixed-case names.
        assert_eq!(
            first("imbot.v2.chat.message.reed"),
            Some("imbot.v2.Chat.Message.read")
        );
    }

    #[test]
    fn suggests_nothing_far_fetched_and_respects_n() {
        let c = Catalog::builtin();
        assert!(c.suggest("zzzz.qqqq.xxxx", 5).is_empty());
        assert!(c.suggest("", 5).is_empty());
        assert!(c.suggest("crm.lead.dlete", 0).is_empty());
        // A known name is not its own suggestion.
        assert!(!c.suggest("crm.lead.list", 10).contains(&"crm.lead.list"));
        let many = c.suggest("crm.lead", 4);
        assert_eq!(many.len(), 4, "{many:?}");
        assert!(many.iter().all(|m| m.starts_with("crm.lead.")), "{many:?}");
    }

    #[test]
    fn distance_is_levenshtein() {
        let mut row = Vec::new();
        let d =
            |a: &str, b: &str, row: &mut Vec<usize>| distance(a.as_bytes(), b.as_bytes(), 10, row);
        assert_eq!(d("kitten", "sitting", &mut row), 3);
        assert_eq!(d("", "abc", &mut row), 3);
        assert_eq!(d("abc", "abc", &mut row), 0);
        assert_eq!(d("flaw", "lawn", &mut row), 2);
        assert_eq!(distance(b"aaaaaaaa", b"bbbbbbbb", 2, &mut row), 3);
    }

    #[test]
    fn fast_enough_per_refused_call() {
        let c = Catalog::builtin();
        let start = std::time::Instant::now();
        for _ in 0..20 {
            let _ = c.suggest("crm.dealcategory.stages.lists", 5);
        }
        // 20 runs over the whole catalog took 1.2 s in a debug build with the load average
        // at 14 (2 cores). The bound catches a quadratic blow-up, not
        // a busy neighbour.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }
}
