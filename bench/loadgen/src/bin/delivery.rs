//! `delivery`: webhook delivery benchmark for converger.
//!
//! Runs a local sink (an axum server on `--sink`, 127.0.0.x only) that answers every
//! `POST /hook` with 200, immediately or after `--sink-delay-ms`, and records when each
//! activity arrived (by the activity `id` in the body). Three modes:
//!
//! - `live` (default): create a `webhook` channel whose `url` is the sink and
//!   `--conversations` conversations on it, post activities over REST open loop at
//!   `--rate`/s (or, with `--rate 0`, closed loop with `--concurrency` requests in
//!   flight) for `--warmup` + `--duration` s, then wait up to `--drain` s for the
//!   stragglers. Reports activities created (201s) and deliveries received by the sink
//!   per second of the measured window, and the latency of each measured activity from
//!   its REST 201 (and from its `inserted_at`) to the sink (see
//!   `converger_loadgen::e2e::tracker`).
//! - `preload`: same set-up, then post `--count` activities as fast as possible and
//!   exit without running the sink. Run it against a server started with
//!   `CONVERGER_DELIVERY_ENABLED=false` to build a backlog.
//! - `drain`: run only the sink until `--count` activities arrived (or `--drain` s
//!   passed); start a delivering server meanwhile. Reports the worker-only delivery
//!   rate from the first to the last arrival.
//! - `count`: same set-up with the sink running, then run `--after-setup` (a shell
//!   command, e.g. one that resets the database's statement statistics), post `--count`
//!   activities closed loop with `--concurrency` in flight and wait (<= `--drain` s)
//!   until the sink has all of them. For per-message cost accounting.
//!
//! Output: a human summary, then one JSON line starting with `{`. Deliveries of one
//! conversation are serialized by converger, so use many conversations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use clap::{Parser, ValueEnum};
use converger_loadgen::e2e::api::Api;
use converger_loadgen::e2e::poster;
use converger_loadgen::e2e::tracker::{Arrival, Tracker};
use serde_json::{Value, json};

/// How long the sink keeps answering after the last expected arrival.
const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Live,
    Preload,
    Drain,
    Count,
}

/// Webhook delivery benchmark: local sink + REST poster.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// live, preload or drain (see the crate docs).
    #[arg(long, value_enum, default_value = "live")]
    mode: Mode,
    /// Base URL of the converger server.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    url: String,
    /// Tenant API key (`x-api-key`); not needed for `drain`.
    #[arg(
        long,
        env = "LOADGEN_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
    /// Address the sink listens on (127.0.0.x).
    #[arg(long, default_value = "127.0.0.1:4501")]
    sink: SocketAddr,
    /// The sink answers after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    sink_delay_ms: u64,
    /// Conversations the activities are spread over, round-robin.
    #[arg(long, default_value_t = 500)]
    conversations: usize,
    /// `live`: activities posted per second; 0 = closed loop (`--concurrency` workers).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Most REST requests in flight (`live`, `preload`, `count`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// `live`: measured seconds after the warm-up.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// `live`: seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds to wait for outstanding deliveries after posting stopped (`live`), or
    /// for all `--count` (`drain`).
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// `preload`/`count`/`drain`: activities to post / to expect.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Tokio worker threads (the generator shares the machine with the server).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// `count`: shell command run after the set-up, before posting (`sh -c`); a
    /// failure aborts the run.
    #[arg(long)]
    after_setup: Option<String>,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

struct Sink {
    tracker: Arc<Tracker>,
    delay: Duration,
}

async fn hook(State(sink): State<Arc<Sink>>, body: Bytes) -> StatusCode {
    let arrival = Arrival::now();
    match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
    {
        Some(id) => sink.tracker.arrived(&id, arrival),
        None => return StatusCode::BAD_REQUEST,
    }
    if !sink.delay.is_zero() {
        tokio::time::sleep(sink.delay).await;
    }
    StatusCode::OK
}

/// Starts the sink; it runs until the process exits.
async fn start_sink(
    addr: SocketAddr,
    tracker: Arc<Tracker>,
    delay: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(addr.ip(), std::net::IpAddr::V4(ip) if ip.octets()[..3] == [127, 0, 0]),
        "--sink must be a 127.0.0.x address"
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::new(Sink { tracker, delay }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("delivery: sink stopped: {e}");
        }
    });
    Ok(())
}

async fn setup(api: &Api, args: &Args) -> anyhow::Result<Vec<String>> {
    let channel = api
        .create_channel(
            "bench-webhook",
            "webhook",
            json!({"url": format!("http://{}/hook", args.sink), "timeout_ms": 15_000}),
        )
        .await?;
    let conversations = api
        .create_conversations(&channel, args.conversations, 16)
        .await?;
    eprintln!(
        "delivery: webhook channel {channel} -> http://{}/hook, {} conversations",
        args.sink,
        conversations.len()
    );
    Ok(conversations
        .iter()
        .map(|c| api.activities_url(c))
        .collect())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.conversations > 0, "--conversations must be > 0");
    for (name, v) in [("--duration", args.duration), ("--drain", args.drain)] {
        anyhow::ensure!(v.is_finite() && v > 0.0, "{name} must be > 0");
    }
    anyhow::ensure!(
        args.warmup.is_finite() && args.warmup >= 0.0,
        "--warmup must be >= 0"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.mode {
        Mode::Live => live(&args).await,
        Mode::Preload => preload(&args).await,
        Mode::Drain => drain(&args).await,
        Mode::Count => count(&args).await,
    }
}

fn api(args: &Args) -> anyhow::Result<Arc<Api>> {
    anyhow::ensure!(
        !args.api_key.is_empty(),
        "--api-key (or LOADGEN_API_KEY) is required"
    );
    Ok(Arc::new(Api::new(
        &args.url,
        &args.api_key,
        Duration::from_secs(10),
        args.concurrency,
    )?))
}

async fn live(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be >= 0"
    );
    let api = api(args)?;
    let tracker = Arc::new(Tracker::new(1));
    start_sink(
        args.sink,
        Arc::clone(&tracker),
        Duration::from_millis(args.sink_delay_ms),
    )
    .await?;
    let urls = Arc::new(setup(&api, args).await?);
    let closed = args.rate == 0.0;
    eprintln!(
        "delivery: live, {} for {}s after {}s warm-up (sink delay {} ms)",
        if closed {
            format!("closed loop with {} in flight", args.concurrency)
        } else {
            format!("{}/s", args.rate)
        },
        args.duration,
        args.warmup,
        args.sink_delay_ms
    );
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    tracker.set_window(measure_from, end);
    let stats = if closed {
        poster::closed_loop(
            Arc::clone(&api),
            urls,
            args.concurrency,
            (measure_from, end),
            Some(Arc::clone(&tracker)),
        )
        .await
    } else {
        poster::open_loop(
            Arc::clone(&api),
            urls,
            args.rate,
            args.concurrency,
            (start, measure_from, end),
            Some(Arc::clone(&tracker)),
        )
        .await
    };
    let posted_done = Instant::now();
    let backlog_at_end = stats.created.saturating_sub(tracker.arrivals());
    let drain_deadline = posted_done + Duration::from_secs_f64(args.drain);
    while tracker.arrivals() < stats.created && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_after = posted_done.elapsed().as_secs_f64();
    // Keep answering: an arrival is recorded before the sink's delay, so leaving now
    // would reset attempts still waiting for their 200, and converger would retry them
    // (30 s later, into whatever listens on the sink address then).
    tokio::time::sleep(Duration::from_millis(args.sink_delay_ms) + GRACE).await;
    let summary = tracker.summary(args.duration);
    let out = json!({
        "label": args.label, "mode": "live", "target_rate": args.rate,
        "sink_delay_ms": args.sink_delay_ms, "conversations": args.conversations,
        "duration_s": args.duration, "post": stats.json(),
        "closed_loop": closed, "concurrency": args.concurrency,
        "created_per_s_in_window": (stats.created_in_window as f64 / args.duration * 100.0).round() / 100.0,
        "backlog_when_posting_stopped": backlog_at_end,
        "drain_s": (drained_after * 100.0).round() / 100.0,
        "undelivered_after_drain": stats.created.saturating_sub(tracker.arrivals()),
        "sink": summary,
    });
    print_human(&out);
    println!("{out}");
    Ok(())
}

async fn preload(args: &Args) -> anyhow::Result<()> {
    let api = api(args)?;
    let urls = Arc::new(setup(&api, args).await?);
    let started = Instant::now();
    let stats = poster::closed_count(
        api,
        urls,
        args.count,
        args.concurrency,
        started + Duration::from_secs(600),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let out = json!({
        "label": args.label, "mode": "preload", "conversations": args.conversations,
        "post": stats.json(), "seconds": (secs * 100.0).round() / 100.0,
        "ingest_per_s": (stats.created as f64 / secs).round(),
    });
    println!(
        "== delivery {}preload: {} created ({} errors) in {secs:.1} s",
        label(args),
        stats.created,
        stats.errors.values().sum::<u64>()
    );
    println!("{out}");
    Ok(())
}

async fn count(args: &Args) -> anyhow::Result<()> {
    let api = api(args)?;
    let tracker = Arc::new(Tracker::new(1));
    start_sink(
        args.sink,
        Arc::clone(&tracker),
        Duration::from_millis(args.sink_delay_ms),
    )
    .await?;
    let urls = Arc::new(setup(&api, args).await?);
    if let Some(cmd) = &args.after_setup {
        let cmd = cmd.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh").arg("-c").arg(cmd).status()
        })
        .await??;
        anyhow::ensure!(status.success(), "--after-setup failed: {status}");
    }
    let started = Instant::now();
    let stats = poster::closed_count(
        api,
        urls,
        args.count,
        args.concurrency,
        started + Duration::from_secs(600),
    )
    .await;
    let posted_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while tracker.arrivals() < stats.created && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_s = started.elapsed().as_secs_f64();
    // Let the last attempts get their 200 and be recorded as delivered.
    tokio::time::sleep(Duration::from_millis(args.sink_delay_ms) + GRACE).await;
    let arrivals = tracker.arrivals();
    let out = json!({
        "label": args.label, "mode": "count", "conversations": args.conversations,
        "expected": args.count, "post": stats.json(),
        "posted_s": (posted_s * 100.0).round() / 100.0,
        "delivered_s": (delivered_s * 100.0).round() / 100.0,
        "arrivals": arrivals,
        "undelivered": stats.created.saturating_sub(arrivals),
    });
    println!(
        "== delivery {}count: {} created ({} errors) in {posted_s:.1} s, {arrivals} delivered after {delivered_s:.1} s",
        label(args),
        stats.created,
        stats.errors.values().sum::<u64>()
    );
    println!("{out}");
    Ok(())
}

async fn drain(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.drain);
    // No poster: every arrival is "unmatched"; the window is the whole wait.
    let tracker = Arc::new(Tracker::new(0));
    tracker.set_window(started, deadline);
    start_sink(
        args.sink,
        Arc::clone(&tracker),
        Duration::from_millis(args.sink_delay_ms),
    )
    .await?;
    eprintln!(
        "delivery: drain, sink on {} waiting for {} deliveries (<= {} s)",
        args.sink, args.count, args.drain
    );
    while tracker.arrivals() < args.count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = started.elapsed().as_secs_f64();
    // As in `live`: let the last attempts get their 200 (and count any extra arrival).
    tokio::time::sleep(Duration::from_millis(args.sink_delay_ms) + GRACE).await;
    let summary = tracker.summary(window);
    let out = json!({
        "label": args.label, "mode": "drain", "expected": args.count,
        "sink_delay_ms": args.sink_delay_ms, "sink": summary,
    });
    print_human(&out);
    println!("{out}");
    Ok(())
}

fn label(args: &Args) -> String {
    if args.label.is_empty() {
        String::new()
    } else {
        format!("{} ", args.label)
    }
}

/// A few lines for people, from the JSON result.
fn print_human(out: &Value) {
    let s = &out["sink"];
    let lat = |k: &str| {
        let h = &s[k];
        format!(
            "p50 {}  p95 {}  p99 {}  max {}  (n {})",
            h["p50_ms"], h["p95_ms"], h["p99_ms"], h["max_ms"], h["n"]
        )
    };
    println!(
        "== delivery {} ({})",
        out["label"].as_str().unwrap_or(""),
        out["mode"]
    );
    if out["mode"] == "live" {
        println!(
            "posted       {} (201: {}, errors: {}, unsent: {}), {} created/s in the measured window, REST p99 {} ms",
            out["post"]["sent"],
            out["post"]["created"],
            out["post"]["errors"],
            out["post"]["unsent"],
            out["created_per_s_in_window"],
            out["post"]["rest_p99_ms"]
        );
        println!(
            "sink         {} deliveries/s in the measured window; backlog {} when posting stopped, drained in {} s, {} undelivered",
            s["arrivals_per_s_in_window"],
            out["backlog_when_posting_stopped"],
            out["drain_s"],
            out["undelivered_after_drain"]
        );
        println!(
            "             duplicates {}, unmatched {}, before 201 {}",
            s["duplicates"], s["unmatched"], s["before_201"]
        );
        println!("201 -> sink  ms {}", lat("from_201"));
        println!("commit->sink ms {}", lat("from_commit"));
    } else {
        println!(
            "sink         {} of {} in {} s first->last: {} deliveries/s",
            s["arrivals_total"],
            out["expected"],
            s["first_to_last_arrival_s"],
            s["arrivals_per_s_first_to_last"]
        );
    }
}
