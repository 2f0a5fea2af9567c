//! Posts `{"text": "bench message <n>"}` activities round-robin over conversations:
//! open loop at a fixed rate ([`open_loop`]), closed loop for a fixed time
//! ([`closed_loop`]) or a fixed count as fast as possible ([`closed_count`]). Every 201 is handed to the [`Tracker`] with its id and
//! `inserted_at`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::api::Api;
use super::tracker::{Posted, Tracker, round2};

/// What the poster saw of its own requests.
#[derive(Default)]
pub struct PostStats {
    /// Requests sent (warm-up included).
    pub sent: u64,
    /// 201s (warm-up included).
    pub created: u64,
    /// Anything else, by status or transport error kind.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: requests scheduled but never sent because every slot stayed busy.
    pub unsent: u64,
    /// 201s whose response arrived inside the measured window.
    pub created_in_window: u64,
    /// REST latency of measured requests from their intended send time, µs.
    pub latency_us: Option<Histogram<u64>>,
}

impl PostStats {
    /// As JSON, latencies in ms.
    pub fn json(&self) -> Value {
        let q = |q: f64| {
            self.latency_us
                .as_ref()
                .filter(|h| !h.is_empty())
                .map_or(0.0, |h| round2(h.value_at_quantile(q) as f64 / 1000.0))
        };
        json!({
            "sent": self.sent, "created": self.created, "errors": self.errors,
            "unsent": self.unsent, "created_in_window": self.created_in_window,
            "rest_p50_ms": q(0.50), "rest_p95_ms": q(0.95), "rest_p99_ms": q(0.99),
        })
    }

    /// Adds another worker's counts (and latencies, if both keep them).
    fn merge(&mut self, other: PostStats) {
        self.sent += other.sent;
        self.created += other.created;
        self.unsent += other.unsent;
        self.created_in_window += other.created_in_window;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        if let (Some(h), Some(o)) = (self.latency_us.as_mut(), other.latency_us.as_ref()) {
            h.add(o).expect("same histogram bounds");
        }
    }

    fn add(&mut self, outcome: Result<(), String>) {
        self.sent += 1;
        match outcome {
            Ok(()) => self.created += 1,
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }
}

/// Posts one activity to `url`; on 201 reports it to `tracker`.
async fn post_one(
    api: &Api,
    url: &str,
    n: u64,
    measured: bool,
    tracker: Option<&Tracker>,
) -> Result<(), String> {
    let sent = Instant::now();
    let response = api
        .client()
        .post(url)
        .header("x-api-key", api.api_key())
        .json(&json!({ "text": format!("bench message {n}") }))
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| transport_kind(&e))?;
    let created = Instant::now();
    if status != 201 {
        return Err(status.to_string());
    }
    if let Some(tracker) = tracker {
        let value: Value = serde_json::from_slice(&body).map_err(|_| "bad_json".to_owned())?;
        let id = value
            .pointer("/data/id")
            .and_then(Value::as_str)
            .ok_or_else(|| "no_id".to_owned())?;
        let inserted_us = value
            .pointer("/data/inserted_at")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros());
        tracker.posted(
            id.to_owned(),
            Posted {
                sent,
                created,
                inserted_us,
                measured,
            },
        );
    }
    Ok(())
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
    .to_owned()
}

/// Sends request `i` at `start + i / rate` until `end`, at most `concurrency` in
/// flight, round-robin over `urls`. Requests intended inside `[measure_from, end)` are
/// measured.
pub async fn open_loop(
    api: Arc<Api>,
    urls: Arc<Vec<String>>,
    rate: f64,
    concurrency: usize,
    (start, measure_from, end): (Instant, Instant, Instant),
    tracker: Option<Arc<Tracker>>,
) -> PostStats {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let stats = Arc::new(Mutex::new(PostStats {
        latency_us: Some(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid"),
        ),
        ..PostStats::default()
    }));
    let intended = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut in_flight = JoinSet::new();
    let mut i = 0u64;
    while intended(i) < end {
        let at = intended(i);
        tokio::time::sleep_until(at.into()).await;
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
            () = tokio::time::sleep_until(end.into()) => break,
        };
        let (api, urls, stats, tracker) = (
            Arc::clone(&api),
            Arc::clone(&urls),
            Arc::clone(&stats),
            tracker.clone(),
        );
        in_flight.spawn(async move {
            let url = &urls[(i % urls.len() as u64) as usize];
            let measured = at >= measure_from;
            let outcome = post_one(&api, url, i, measured, tracker.as_deref()).await;
            let done = Instant::now();
            drop(permit);
            let mut stats = stats.lock().expect("stats lock poisoned");
            if measured && let Some(h) = stats.latency_us.as_mut() {
                h.saturating_record(u64::try_from((done - at).as_micros()).unwrap_or(u64::MAX));
            }
            if outcome.is_ok() && done >= measure_from && done < end {
                stats.created_in_window += 1;
            }
            stats.add(outcome);
        });
        while in_flight.try_join_next().is_some() {}
        i += 1;
    }
    let mut unsent = 0;
    while intended(i) < end {
        unsent += u64::from(intended(i) >= measure_from);
        i += 1;
    }
    while in_flight.join_next().await.is_some() {}
    let mut stats = Arc::into_inner(stats)
        .expect("every sender has finished")
        .into_inner()
        .expect("stats lock poisoned");
    stats.unsent = unsent;
    stats
}

/// `concurrency` workers, each posting its next activity as soon as the previous one
/// is answered, from `start` until `end`, round-robin over `urls`. Requests sent inside
/// `[measure_from, end)` are measured (latency from the send); 201s answered inside
/// that window count as `created_in_window`.
pub async fn closed_loop(
    api: Arc<Api>,
    urls: Arc<Vec<String>>,
    concurrency: usize,
    (measure_from, end): (Instant, Instant),
    tracker: Option<Arc<Tracker>>,
) -> PostStats {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (api, urls, next, tracker) = (
            Arc::clone(&api),
            Arc::clone(&urls),
            Arc::clone(&next),
            tracker.clone(),
        );
        workers.spawn(async move {
            let mut stats = PostStats {
                latency_us: Some(
                    Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .expect("static bounds are valid"),
                ),
                ..PostStats::default()
            };
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let url = &urls[(n % urls.len() as u64) as usize];
                let measured = sent >= measure_from;
                let outcome = post_one(&api, url, n, measured, tracker.as_deref()).await;
                let done = Instant::now();
                if measured && let Some(h) = stats.latency_us.as_mut() {
                    h.saturating_record(
                        u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX),
                    );
                }
                if outcome.is_ok() && done >= measure_from && done < end {
                    stats.created_in_window += 1;
                }
                stats.add(outcome);
            }
            stats
        });
    }
    let mut total = PostStats {
        latency_us: Some(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid"),
        ),
        ..PostStats::default()
    };
    while let Some(stats) = workers.join_next().await {
        let stats = stats.expect("a poster panicked");
        total.merge(stats);
    }
    total
}

/// Posts `count` activities as fast as `concurrency` workers can, round-robin over
/// `urls` (to build a backlog). Stops early at `deadline`.
pub async fn closed_count(
    api: Arc<Api>,
    urls: Arc<Vec<String>>,
    count: u64,
    concurrency: usize,
    deadline: Instant,
) -> PostStats {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (api, urls, next) = (Arc::clone(&api), Arc::clone(&urls), Arc::clone(&next));
        workers.spawn(async move {
            let mut stats = PostStats::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline {
                    break;
                }
                let url = &urls[(n % urls.len() as u64) as usize];
                stats.add(post_one(&api, url, n, false, None).await);
            }
            stats
        });
    }
    let mut total = PostStats::default();
    while let Some(stats) = workers.join_next().await {
        total.merge(stats.expect("a poster panicked"));
    }
    total
}
