//! Matches posted activities with their arrivals and measures the time in between.
//!
//! Three clocks are kept per arrival, all in microseconds:
//! - `from_201`: from the moment this process had the REST 201 in hand to the arrival
//!   (monotonic clock). An arrival can precede its 201 (the server publishes or
//!   delivers while the HTTP response is still on its way); those count as 0 and are
//!   counted in `before_201`.
//! - `from_send`: from the moment the POST was sent (an upper bound, includes the
//!   REST round trip).
//! - `from_commit`: from the activity's `inserted_at` (the server's wall clock, set in
//!   the insert transaction) to the arrival (this machine's wall clock: the same clock,
//!   since only local servers are measured).
//!
//! Arrivals that come before the 201 are parked on their activity and measured once
//! the 201 is seen. Only activities posted during the measured window are measured;
//! every arrival counts towards throughput when it lands inside the window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What the poster knows about one created activity.
#[derive(Debug, Clone, Copy)]
pub struct Posted {
    /// When the POST was sent.
    pub sent: Instant,
    /// When its 201 arrived.
    pub created: Instant,
    /// `inserted_at` of the activity, µs since the epoch, if it parsed.
    pub inserted_us: Option<i64>,
    /// Posted inside the measured window.
    pub measured: bool,
}

/// One arrival of an activity somewhere (the sink, a socket).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Monotonic arrival time.
    pub at: Instant,
    /// Wall-clock arrival time, µs since the epoch.
    pub wall_us: i64,
}

impl Arrival {
    /// Now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall_us: super::proc::now_micros(),
        }
    }
}

#[derive(Default)]
struct Slot {
    posted: Option<Posted>,
    /// Arrivals seen before the 201.
    parked: Vec<Arrival>,
    arrivals: u32,
}

struct Inner {
    slots: HashMap<String, Slot>,
    from_201: Histogram<u64>,
    from_send: Histogram<u64>,
    from_commit: Histogram<u64>,
    before_201: u64,
    arrivals_total: u64,
    arrivals_in_window: u64,
    duplicates: u64,
    posted_measured: u64,
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    /// The measured window `[from, until)`, once known.
    window: Option<(Instant, Instant)>,
}

/// Shared by the poster and the receivers.
pub struct Tracker {
    inner: Mutex<Inner>,
    /// Arrivals expected per activity (1 for a webhook, the sockets per conversation
    /// for WebSockets); 0 = unknown, no duplicate or loss accounting.
    expected: u32,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Tracker {
    /// A tracker expecting `expected` arrivals per activity (0 = unknown). Until
    /// [`Tracker::set_window`] no arrival counts as inside the measured window.
    pub fn new(expected: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                from_201: histogram(),
                from_send: histogram(),
                from_commit: histogram(),
                before_201: 0,
                arrivals_total: 0,
                arrivals_in_window: 0,
                duplicates: 0,
                posted_measured: 0,
                first_arrival: None,
                last_arrival: None,
                window: None,
            }),
            expected,
        }
    }

    /// Fixes the measured window `[from, until)` for throughput counting (which
    /// activities are measured is the poster's `Posted::measured`).
    pub fn set_window(&self, from: Instant, until: Instant) {
        self.inner.lock().expect("tracker lock poisoned").window = Some((from, until));
    }

    /// The poster saw the 201 of activity `id`.
    pub fn posted(&self, id: String, posted: Posted) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        if posted.measured {
            inner.posted_measured += 1;
        }
        let parked = {
            let slot = inner.slots.entry(id).or_default();
            slot.posted = Some(posted);
            std::mem::take(&mut slot.parked)
        };
        for arrival in parked {
            inner.measure(&posted, &arrival);
        }
    }

    /// Activity `id` arrived.
    pub fn arrived(&self, id: &str, arrival: Arrival) {
        let mut inner = self.inner.lock().expect("tracker lock poisoned");
        inner.arrivals_total += 1;
        if inner
            .window
            .is_some_and(|(from, until)| arrival.at >= from && arrival.at < until)
        {
            inner.arrivals_in_window += 1;
        }
        inner.first_arrival = inner
            .first_arrival
            .min(Some(arrival.at))
            .or(Some(arrival.at));
        inner.last_arrival = inner.last_arrival.max(Some(arrival.at));
        let expected = self.expected;
        let (posted, duplicate) = {
            let slot = inner.slots.entry(id.to_owned()).or_default();
            slot.arrivals += 1;
            let duplicate = expected > 0 && slot.arrivals > expected;
            if slot.posted.is_none() {
                slot.parked.push(arrival);
            }
            (slot.posted, duplicate)
        };
        if duplicate {
            inner.duplicates += 1;
        }
        if let Some(posted) = posted {
            inner.measure(&posted, &arrival);
        }
    }

    /// Arrivals so far.
    pub fn arrivals(&self) -> u64 {
        self.inner
            .lock()
            .expect("tracker lock poisoned")
            .arrivals_total
    }

    /// Measured activities still missing arrivals (0 when `expected` is unknown).
    pub fn missing(&self) -> u64 {
        if self.expected == 0 {
            return 0;
        }
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner
            .slots
            .values()
            .filter_map(|s| s.posted.filter(|p| p.measured).map(|_| s.arrivals))
            .map(|n| u64::from(self.expected.saturating_sub(n)))
            .sum()
    }

    /// Arrivals with no matching 201 (posted but unanswered, or foreign).
    pub fn unmatched(&self) -> u64 {
        let inner = self.inner.lock().expect("tracker lock poisoned");
        inner
            .slots
            .values()
            .filter(|s| s.posted.is_none())
            .map(|s| u64::from(s.arrivals))
            .sum()
    }

    /// The numbers as JSON (latencies in ms, rounded to 0.01).
    pub fn summary(&self, window_secs: f64) -> Value {
        let missing = self.missing();
        let unmatched = self.unmatched();
        let inner = self.inner.lock().expect("tracker lock poisoned");
        let pct = |h: &Histogram<u64>| {
            let q = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    round2(h.value_at_quantile(q) as f64 / 1000.0)
                }
            };
            json!({
                "n": h.len(), "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
                "max_ms": if h.is_empty() { 0.0 } else { round2(h.max() as f64 / 1000.0) },
            })
        };
        let span = match (inner.first_arrival, inner.last_arrival) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        json!({
            "posted_measured": inner.posted_measured,
            "arrivals_total": inner.arrivals_total,
            "arrivals_in_window": inner.arrivals_in_window,
            "arrivals_per_s_in_window": round2(inner.arrivals_in_window as f64 / window_secs.max(1e-9)),
            "first_to_last_arrival_s": round2(span),
            "arrivals_per_s_first_to_last": if span > 0.0 {
                round2(inner.arrivals_total.saturating_sub(1) as f64 / span)
            } else { 0.0 },
            "missing": missing,
            "duplicates": inner.duplicates,
            "unmatched": unmatched,
            "before_201": inner.before_201,
            "from_201": pct(&inner.from_201),
            "from_send": pct(&inner.from_send),
            "from_commit": pct(&inner.from_commit),
        })
    }
}

impl Inner {
    fn measure(&mut self, posted: &Posted, arrival: &Arrival) {
        if !posted.measured {
            return;
        }
        match arrival.at.checked_duration_since(posted.created) {
            Some(d) => self.from_201.saturating_record(micros(d)),
            None => {
                self.before_201 += 1;
                self.from_201.saturating_record(1);
            }
        }
        let from_send = arrival.at.saturating_duration_since(posted.sent);
        self.from_send.saturating_record(micros(from_send));
        if let Some(inserted) = posted.inserted_us {
            let us = u64::try_from(arrival.wall_us - inserted)
                .unwrap_or(0)
                .max(1);
            self.from_commit.saturating_record(us);
        }
    }
}

/// `x` rounded to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
