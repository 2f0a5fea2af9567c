//! The two load shapes: closed loop (max throughput) and open loop (fixed rate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Args;
use crate::stats::{Outcome, Report, Stats};

/// What to send and for how long.
pub struct Plan {
    client: reqwest::Client,
    api_key: String,
    /// `.../conversations/{id}/activities`, one per conversation.
    urls: Vec<String>,
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
    /// Number of the next activity (`bench message <n>`), shared by all senders.
    next: AtomicU64,
}

impl Plan {
    pub fn new(client: reqwest::Client, api_key: String, urls: Vec<String>, args: &Args) -> Self {
        Self {
            client,
            api_key,
            urls,
            concurrency: args.concurrency,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            next: AtomicU64::new(0),
        }
    }

    /// Posts the next activity, to the next conversation round-robin, and reads the
    /// whole response so the connection goes back to the pool.
    async fn send_next(&self) -> Outcome {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let url = &self.urls[(n % self.urls.len() as u64) as usize];
        let result = self
            .client
            .post(url)
            .header("x-api-key", &self.api_key)
            .json(&json!({ "text": format!("bench message {n}") }))
            .send()
            .await;
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) => Outcome::Status(status),
                    Err(e) => Outcome::from_error(&e),
                }
            }
            Err(e) => Outcome::from_error(&e),
        }
    }
}

/// `concurrency` workers, each sending its next request as soon as the previous one is
/// answered, until `warmup + duration` has passed. Latency is measured from the send.
pub async fn closed_loop(plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;

    let mut workers = JoinSet::new();
    for _ in 0..plan.concurrency {
        let plan = Arc::clone(&plan);
        workers.spawn(async move {
            let mut stats = Stats::new();
            loop {
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let outcome = plan.send_next().await;
                let done = Instant::now();
                stats.record(sent_at >= measure_from, outcome, done - sent_at, done);
            }
            stats
        });
    }
    let mut stats = Stats::new();
    while let Some(worker) = workers.join_next().await {
        stats.merge(worker.expect("a load worker panicked"));
    }
    Report {
        stats,
        measure_from,
        unsent: 0,
        mode: "closed",
    }
}

/// Sends request `i` at its intended time `start + i / rate`, whatever happened to
/// earlier requests, with at most `concurrency` in flight. Latency is measured from
/// the intended time, so time spent waiting for a free slot counts (no coordinated
/// omission). Requests still waiting for a slot at the end are counted as unsent.
pub async fn open_loop(plan: Plan, rate: f64) -> Report {
    let plan = Arc::new(plan);
    let slots = Arc::new(Semaphore::new(plan.concurrency as usize));
    let stats = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let intended = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);

    let mut in_flight = JoinSet::new();
    let mut i = 0u64;
    while intended(i) < end {
        let at = intended(i);
        tokio::time::sleep_until(at.into()).await;
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = tokio::time::sleep_until(end.into()) => break,
        };
        let plan = Arc::clone(&plan);
        let stats = Arc::clone(&stats);
        in_flight.spawn(async move {
            let outcome = plan.send_next().await;
            let done = Instant::now();
            drop(permit);
            stats.lock().expect("stats lock poisoned").record(
                at >= measure_from,
                outcome,
                done - at,
                done,
            );
        });
        // Reap finished tasks so the set stays as small as the in-flight bound.
        while in_flight.try_join_next().is_some() {}
        i += 1;
    }
    // Measured requests scheduled before the end but never sent.
    let mut unsent = 0;
    while intended(i) < end {
        if intended(i) >= measure_from {
            unsent += 1;
        }
        i += 1;
    }
    while in_flight.join_next().await.is_some() {}

    let stats = Arc::into_inner(stats)
        .expect("every sender has finished")
        .into_inner()
        .expect("stats lock poisoned");
    Report {
        stats,
        measure_from,
        unsent,
        mode: "open",
    }
}
