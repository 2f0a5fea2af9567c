//! After the run: what the store holds (read back over REST), and the pure checks that
//! compare it with what the load, the sockets and the sink saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// Page size of the listings (the API's maximum).
const PAGE: usize = 500;

/// One stored activity, as the REST listing returns it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub seq: i64,
    pub idempotency_key: Option<String>,
}

/// A tenant's REST view, for reading back.
pub struct Reader {
    pub client: reqwest::Client,
    pub base: String,
    pub api_key: String,
}

impl Reader {
    async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path_and_query}", self.base);
        let mut last = None;
        // The store may still be catching up after a cut: a few tries.
        for _ in 0..10 {
            match self
                .client
                .get(&url)
                .header("x-api-key", &self.api_key)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.with_context(|| format!("GET {url}"));
                }
                Ok(r) => last = Some(format!("status {}", r.status())),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("GET {url}: {}", last.unwrap_or_default())
    }

    /// Every activity of a conversation, in `seq` order.
    ///
    /// # Errors
    /// A page could not be read.
    pub async fn activities(&self, conversation_id: &str) -> anyhow::Result<Vec<Stored>> {
        let mut all = Vec::new();
        let mut after = 0i64;
        loop {
            let page = self
                .get(&format!(
                    "/api/v1/conversations/{conversation_id}/activities?after={after}&limit={PAGE}"
                ))
                .await?;
            let items = page
                .get("data")
                .and_then(Value::as_array)
                .context("listing without data")?;
            for item in items {
                all.push(Stored {
                    id: item
                        .get("id")
                        .and_then(Value::as_str)
                        .context("activity without id")?
                        .to_owned(),
                    seq: item
                        .get("seq")
                        .and_then(Value::as_i64)
                        .context("activity without seq")?,
                    idempotency_key: item
                        .get("idempotency_key")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
            match all.last() {
                Some(last) if items.len() == PAGE => after = last.seq,
                _ => return Ok(all),
            }
        }
    }

    /// How many of the tenant's deliveries have `status` (`pending`, `failed`).
    ///
    /// # Errors
    /// A page could not be read.
    pub async fn count_deliveries(&self, status: &str) -> anyhow::Result<u64> {
        let mut count = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/deliveries?status={status}&limit={PAGE}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path).await?;
            count += page
                .get("data")
                .and_then(Value::as_array)
                .map_or(0, |a| a.len() as u64);
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(count),
            }
        }
    }
}

/// Missing and repeated `seq`s of one conversation's stored activities: `seq`s run
/// from 1 without a hole, each once.
pub fn seq_gaps(seqs: &[i64]) -> u64 {
    let distinct: HashSet<i64> = seqs.iter().copied().collect();
    let max = seqs.iter().copied().max().unwrap_or(0).max(0);
    let below_one = distinct.iter().filter(|s| **s < 1).count() as u64;
    let holes = u64::try_from(max).unwrap_or(0) - (distinct.len() as u64 - below_one);
    let repeats = (seqs.len() - distinct.len()) as u64;
    holes + repeats + below_one
}

/// Idempotency keys stored more than once (each extra row counts).
pub fn duplicate_keys<'a>(keys: impl Iterator<Item = &'a str>) -> u64 {
    let mut seen = HashMap::<&str, u64>::new();
    for key in keys {
        *seen.entry(key).or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

/// First arrivals, per conversation, of a `seq` lower than one that arrived before it
/// (deliveries of a conversation go out in `seq` order). `arrivals` are in arrival
/// order: (conversation, seq).
pub fn order_violations<'a>(arrivals: impl Iterator<Item = (&'a str, i64)>) -> u64 {
    let mut highest = HashMap::<&str, i64>::new();
    let mut seen = HashSet::<(&str, i64)>::new();
    let mut violations = 0;
    for (conversation, seq) in arrivals {
        if !seen.insert((conversation, seq)) {
            continue;
        }
        let top = highest.entry(conversation).or_insert(0);
        if seq < *top {
            violations += 1;
        }
        *top = (*top).max(seq);
    }
    violations
}

/// How the sink resumed after one kill.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumption {
    /// Conversations waiting for a delivery at the kill: with an activity acknowledged
    /// before `waiting_until` that was not at the sink before the kill. A conversation
    /// whose head delivery the killed node held gets nothing until that lease is given
    /// back, however many activities queue behind it.
    pub backlogged: usize,
    /// Of those, the ones whose next arrival took longer than `stall`.
    pub stalled: usize,
    /// Kill → the sink's first arrival after it (any conversation).
    pub first_arrival: Option<Duration>,
    /// Kill → every backlogged conversation had an arrival again; `None` when none
    /// was backlogged, `Duration::MAX` when one never resumed.
    pub all_resumed: Option<Duration>,
}

/// What happened at the sink after a kill at `kill`. `acked`: (conversation,
/// activity id, acknowledged at); `arrivals`: (conversation, activity id, at), in
/// arrival order.
pub fn resumption(
    kill: Instant,
    waiting_until: Instant,
    acked: &[(usize, &str, Instant)],
    arrivals: &[(usize, &str, Instant)],
    stall: Duration,
) -> Resumption {
    let mut first_seen = HashMap::<&str, Instant>::new();
    for (_, id, at) in arrivals {
        first_seen.entry(*id).or_insert(*at);
    }
    let backlogged: HashSet<usize> = acked
        .iter()
        .filter(|(_, id, at)| {
            *at < waiting_until && first_seen.get(id).is_none_or(|seen| *seen >= kill)
        })
        .map(|(c, _, _)| *c)
        .collect();
    let mut next = BTreeMap::<usize, Instant>::new();
    let mut first_arrival = None;
    for (c, _, at) in arrivals.iter().filter(|(_, _, at)| *at >= kill) {
        first_arrival = Some(first_arrival.map_or(*at - kill, |d: Duration| d.min(*at - kill)));
        if backlogged.contains(c) {
            next.entry(*c).or_insert(*at);
        }
    }
    let waits: Vec<Duration> = backlogged
        .iter()
        .map(|c| next.get(c).map_or(Duration::MAX, |at| *at - kill))
        .collect();
    Resumption {
        backlogged: backlogged.len(),
        stalled: waits.iter().filter(|w| **w > stall).count(),
        first_arrival,
        all_resumed: waits.iter().copied().max(),
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_gaps_counts_holes_and_repeats() {
        assert_eq!(seq_gaps(&[]), 0);
        assert_eq!(seq_gaps(&[1, 2, 3]), 0);
        assert_eq!(seq_gaps(&[1, 3]), 1);
        assert_eq!(seq_gaps(&[2, 3]), 1);
        assert_eq!(seq_gaps(&[1, 2, 2, 3]), 1);
        assert_eq!(seq_gaps(&[1, 2, 5, 5]), 3);
        assert_eq!(seq_gaps(&[0, 1]), 1);
    }

    #[test]
    fn duplicate_keys_counts_extra_rows() {
        assert_eq!(duplicate_keys(["a", "b", "c"].into_iter()), 0);
        assert_eq!(duplicate_keys(["a", "b", "a", "a"].into_iter()), 2);
    }

    #[test]
    fn order_violations_ignore_repeats() {
        let ok = [("c", 1), ("d", 1), ("c", 2), ("c", 1), ("c", 3)];
        assert_eq!(order_violations(ok.into_iter()), 0);
        let bad = [("c", 1), ("c", 3), ("c", 2), ("d", 1)];
        assert_eq!(order_violations(bad.into_iter()), 1);
    }

    #[test]
    fn resumption_waits_for_every_backlogged_conversation() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let half = Duration::from_millis(500);
        let kill = t + s(10);
        // Conversation 0: acknowledged at 9 s, delivered before the kill. Conversation 1:
        // acknowledged at 9 s, delivered 7 s after the kill. Conversation 2: acknowledged
        // at 9.5 s, delivered 1 s after the kill. Conversation 3: acknowledged 0.5 s
        // after the kill (queued behind a held head), delivered 6 s after it.
        // Conversation 4: acknowledged 5 s after the kill, outside the window.
        let acked = [
            (0, "a", t + s(9)),
            (1, "b", t + s(9)),
            (2, "c", t + s(9) + half),
            (3, "d", kill + half),
            (4, "e", kill + s(5)),
        ];
        let arrivals = [
            (0, "a", t + s(9) + half),
            (2, "c", kill + s(1)),
            (3, "d", kill + s(6)),
            (1, "b", kill + s(7)),
            (4, "e", kill + s(8)),
        ];
        let r = resumption(kill, kill + s(1), &acked, &arrivals, s(2));
        assert_eq!(r.backlogged, 3);
        assert_eq!(r.stalled, 2);
        assert_eq!(r.first_arrival, Some(s(1)));
        assert_eq!(r.all_resumed, Some(s(7)));

        let narrow = resumption(kill, kill, &acked, &arrivals, s(2));
        assert_eq!(narrow.backlogged, 2);
        let never = resumption(kill, kill + s(1), &acked, &arrivals[..3], s(2));
        assert_eq!(never.all_resumed, Some(Duration::MAX));
        let quiet = resumption(t, t, &acked, &arrivals, s(2));
        assert_eq!(quiet.backlogged, 0);
        assert_eq!(quiet.all_resumed, None);
    }

    #[test]
    fn quantile_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 1.0), Some(3.0));
        assert_eq!(quantile(&[1.0, f64::INFINITY], 0.5), Some(1.0));
        assert_eq!(quantile(&[1.0, f64::INFINITY], 1.0), Some(f64::INFINITY));
    }
}
