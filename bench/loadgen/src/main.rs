//! `loadgen`: a load generator for converger's REST ingest path.
//!
//! It creates one `websocket` channel and `--conversations` conversations with the
//! tenant API key, then posts `{"text":"bench message <n>"}` activities to
//! `POST /api/v1/conversations/{id}/activities`, round-robin over the conversations,
//! and reports status counts, throughput and latency percentiles (a human summary on
//! stdout, then one JSON line starting with `{`).
//!
//! Two modes:
//! - `--rate 0` (default): closed loop, as fast as possible with `--concurrency`
//!   requests in flight ([`run::closed_loop`]).
//! - `--rate R`: open loop at R requests/s with at most `--concurrency` in flight
//!   ([`run::open_loop`]); latency counts from each request's intended send time, so a
//!   stalled server is not hidden by the generator slowing down (coordinated omission).
//!
//! Only what happens after `--warmup` seconds is measured; the process exits by itself
//! after `warmup + duration` seconds (plus at most `--timeout` for requests in flight).
//! It talks plain HTTP/1.1 and knows nothing about converger beyond its public API.

mod run;
mod setup;
mod stats;

use std::time::Duration;

use clap::Parser;

/// REST ingest load generator for converger.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Base URL of the converger server.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// Tenant API key (sent as `x-api-key`).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Number of conversations the activities are spread over, round-robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub conversations: u32,
    /// Target rate in activities/s; 0 = as fast as possible (closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Most requests in flight at once (the number of workers when `--rate 0`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Tokio worker threads of the generator (it shares the machine with the server).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Free-form label copied into the JSON line (e.g. `sqlite-max`).
    #[arg(long, default_value = "")]
    pub label: String,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be >= 0"
        );
        for (name, v) in [("--duration", self.duration), ("--timeout", self.timeout)] {
            anyhow::ensure!(v.is_finite() && v > 0.0, "{name} must be > 0");
        }
        anyhow::ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must be >= 0"
        );
        anyhow::ensure!(
            self.url.starts_with("http://") || self.url.starts_with("https://"),
            "--url must start with http:// or https://"
        );
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?;
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.concurrency as usize)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();

    let targets = setup::prepare(&client, &base, &args.api_key, args.conversations).await?;
    eprintln!(
        "loadgen: channel {} with {} conversations ready; {} for {}s after {}s warm-up",
        targets.channel_id,
        targets.activity_urls.len(),
        if args.rate > 0.0 {
            format!(
                "open loop at {}/s, <= {} in flight",
                args.rate, args.concurrency
            )
        } else {
            format!("closed loop, {} in flight", args.concurrency)
        },
        args.duration,
        args.warmup,
    );

    let plan = run::Plan::new(client, args.api_key.clone(), targets.activity_urls, &args);
    let report = if args.rate > 0.0 {
        run::open_loop(plan, args.rate).await
    } else {
        run::closed_loop(plan).await
    };

    println!("{}", report.human(&args));
    println!("{}", report.json(&args));
    Ok(())
}
