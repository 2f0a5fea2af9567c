//! `wsbench`: WebSocket (Phoenix Channels V2) benchmark for converger.
//!
//! Set-up over REST with a tenant API key: one `websocket` channel, `--conversations`
//! conversations, one client token per conversation (`POST /api/v1/tokens`; the
//! server's token limit must be off: `CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE=0`). Then
//! `--sockets` sockets connect to `/socket/websocket?token=..&vsn=2.0.0`, socket `i`
//! joining `conversation:<conversations[i % conversations]>`, at most
//! `--connect-concurrency` handshakes at a time, from the `--source` addresses in turn
//! (several 127.0.0.x addresses lift the ~28k ephemeral ports per source limit). Each
//! socket heartbeats every `--heartbeat` s so the server's idle timeout never fires.
//!
//! - `--rate R` > 0: post R activities/s over REST (open loop, round-robin over the
//!   conversations) for `--warmup` + `--duration` s, and measure REST 201 → socket
//!   receive (and `inserted_at` → receive) per delivered frame, p50/p95/p99.
//! - `--rate 0`: idle sockets; with `--server-pid`, reports the server's `VmRSS`
//!   before connecting, once all joined (after `--settle` s), and after `--hold` s,
//!   and the KiB per socket.
//!
//! Output: a human summary, then one JSON line starting with `{`. Only 127.0.0.x
//! servers are accepted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use converger_loadgen::e2e::api::Api;
use converger_loadgen::e2e::poster;
use converger_loadgen::e2e::proc::{open_fds, rss_kib};
use converger_loadgen::e2e::tracker::{Arrival, Tracker};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// WebSocket benchmark: many joined sockets, REST posts, end-to-end latency / RSS.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Base URL of the converger server (http://127.0.0.x:port).
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    url: String,
    /// Tenant API key (`x-api-key`).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Sockets to open and join.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Conversations; socket i joins conversation i % conversations.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Activities posted per second; 0 = idle sockets only (memory).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Most REST requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds after the warm-up (`--rate` > 0).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Handshakes + joins in flight while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Local addresses to connect from, comma-separated, used in turn (127.0.0.x).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    source: Vec<IpAddr>,
    /// Seconds between heartbeats of each socket.
    #[arg(long, default_value_t = 30.0)]
    heartbeat: f64,
    /// Server process id, to read its VmRSS and open fds.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Idle mode: seconds to wait after the last join before reading RSS.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Idle mode: seconds to hold the sockets after that, then read RSS again.
    #[arg(long, default_value_t = 20.0)]
    hold: f64,
    /// Tokio worker threads (the generator shares the machine with the server).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

/// Counters shared by the socket tasks.
#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    failed: AtomicU64,
    /// Joined sockets that ended before they were told to stop.
    dropped: AtomicU64,
    frames: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.sockets > 0 && args.conversations > 0,
        "--sockets and --conversations must be > 0"
    );
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be >= 0"
    );
    anyhow::ensure!(
        args.source
            .iter()
            .all(|ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0])),
        "--source addresses must be 127.0.0.x"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .context("--url must be http://127.0.0.x:port")?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .context("--url must be http://<ip>:<port>")?;
    anyhow::ensure!(
        matches!(addr.ip(), IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0]),
        "only 127.0.0.x servers"
    );
    Ok(addr)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let server = server_addr(&args.url)?;
    let api = Arc::new(Api::new(
        &args.url,
        &args.api_key,
        Duration::from_secs(10),
        args.concurrency,
    )?);
    let t0 = Instant::now();
    let channel = api
        .create_channel("bench-ws", "websocket", json!({}))
        .await?;
    let conversations = api
        .create_conversations(&channel, args.conversations, 16)
        .await?;
    let tokens = api.create_tokens(&conversations, 16).await?;
    eprintln!(
        "wsbench: {} conversations and tokens in {:.1} s; connecting {} sockets",
        conversations.len(),
        t0.elapsed().as_secs_f64(),
        args.sockets
    );
    let rss_before = args.server_pid.and_then(|p| rss_kib(p).ok());
    let fds_before = args.server_pid.and_then(open_fds);

    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    let expected = if args.sockets % args.conversations == 0 {
        u32::try_from(args.sockets / args.conversations).unwrap_or(0)
    } else {
        0
    };
    let tracker = Arc::new(Tracker::new(expected));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let heartbeat = Duration::from_secs_f64(args.heartbeat.max(1.0));

    let connect_started = Instant::now();
    let mut sockets = JoinSet::new();
    for i in 0..args.sockets {
        let c = i % conversations.len();
        let url = format!(
            "ws://{server}/socket/websocket?token={}&vsn=2.0.0",
            tokens[c]
        );
        let topic = format!("conversation:{}", conversations[c]);
        let source = args.source[i % args.source.len()];
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .expect("never closed");
        let (tracker, counters, stop) =
            (Arc::clone(&tracker), Arc::clone(&counters), stop_rx.clone());
        sockets.spawn(async move {
            let socket = Socket {
                server,
                source,
                url,
                topic,
                config,
                heartbeat,
            };
            socket.run(permit, tracker, counters, stop).await;
        });
        if Instant::now() >= connect_deadline {
            break;
        }
        while sockets.try_join_next().is_some() {}
    }
    // Wait for the last handshakes.
    while counters.joined.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
        < args.sockets as u64
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = counters.joined.load(Ordering::Relaxed);
    let connect_secs = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "wsbench: {joined} joined, {} failed in {connect_secs:.1} s",
        counters.failed.load(Ordering::Relaxed)
    );

    let mut out = json!({
        "label": args.label, "sockets": args.sockets, "conversations": args.conversations,
        "sources": args.source.len(), "joined": joined,
        "connect_failed": counters.failed.load(Ordering::Relaxed),
        "connect_s": round2(connect_secs),
    });
    if args.rate > 0.0 {
        let urls: Arc<Vec<String>> = Arc::new(
            conversations
                .iter()
                .map(|c| api.activities_url(c))
                .collect(),
        );
        let load_start = Instant::now();
        let measure_from = load_start + Duration::from_secs_f64(args.warmup);
        let end = measure_from + Duration::from_secs_f64(args.duration);
        tracker.set_window(measure_from, end);
        let stats = poster::open_loop(
            Arc::clone(&api),
            urls,
            args.rate,
            args.concurrency,
            (load_start, measure_from, end),
            Some(Arc::clone(&tracker)),
        )
        .await;
        // Stragglers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        out["rate"] = json!(args.rate);
        out["duration_s"] = json!(args.duration);
        out["post"] = stats.json();
        out["ws"] = tracker.summary(args.duration);
    } else {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let rss_joined = args.server_pid.and_then(|p| rss_kib(p).ok());
        let fds_joined = args.server_pid.and_then(open_fds);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let rss_held = args.server_pid.and_then(|p| rss_kib(p).ok());
        let per_socket = |rss: Option<u64>| match (rss_before, rss) {
            (Some(a), Some(b)) if joined > 0 => {
                json!(round2((b as f64 - a as f64) / joined as f64))
            }
            _ => Value::Null,
        };
        out["server_rss_kib"] = json!({
            "before": rss_before, "joined": rss_joined, "after_hold": rss_held,
        });
        out["server_fds"] = json!({"before": fds_before, "joined": fds_joined});
        out["kib_per_socket_joined"] = per_socket(rss_joined);
        out["kib_per_socket_after_hold"] = per_socket(rss_held);
        out["hold_s"] = json!(args.hold);
    }
    out["dropped_while_running"] = json!(counters.dropped.load(Ordering::Relaxed));
    out["frames"] = json!(counters.frames.load(Ordering::Relaxed));
    out["client_rss_kib"] = json!(rss_kib(std::process::id()).ok());
    let _ = stop_tx.send(true);
    let closing = Instant::now() + Duration::from_secs(5);
    while !sockets.is_empty() && Instant::now() < closing {
        while sockets.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sockets.abort_all();
    print_human(&out);
    println!("{out}");
    Ok(())
}

/// One client socket.
struct Socket {
    server: SocketAddr,
    source: IpAddr,
    url: String,
    topic: String,
    config: WebSocketConfig,
    heartbeat: Duration,
}

impl Socket {
    async fn run(
        self,
        permit: tokio::sync::OwnedSemaphorePermit,
        tracker: Arc<Tracker>,
        counters: Arc<Counters>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ws = match self.connect_and_join().await {
            Ok(ws) => ws,
            Err(e) => {
                if counters.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("wsbench: socket failed: {e:#}");
                }
                return;
            }
        };
        counters.joined.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
                _ = beat.tick() => {
                    n += 1;
                    let frame = json!([null, format!("hb{n}"), "phoenix", "heartbeat", {}]).to_string();
                    if ws.send(Message::text(frame)).await.is_err() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let arrival = Arrival::now();
                        counters.frames.fetch_add(1, Ordering::Relaxed);
                        if let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text.as_str())
                            && frame.get(3).and_then(Value::as_str) == Some("new_activity")
                            && let Some(id) = frame.get(4).and_then(|p| p.get("id")).and_then(Value::as_str)
                        {
                            tracker.arrived(id, arrival);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        if !*stop.borrow() {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        }
    }

    async fn connect_and_join(
        &self,
    ) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(self.source, 0))
            .context("bind")?;
        let stream = socket.connect(self.server).await.context("connect")?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(
                self.url.as_str(),
                stream,
                Some(self.config),
            ),
        )
        .await
        .context("handshake timed out")?
        .context("handshake")?;
        let join = json!(["1", "1", self.topic, "phx_join", {}]).to_string();
        ws.send(Message::text(join)).await.context("send join")?;
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(msg) = ws.next().await {
                if let Message::Text(text) = msg? {
                    let frame: Value = serde_json::from_str(text.as_str())?;
                    if frame.get(1).and_then(Value::as_str) == Some("1")
                        && frame.get(3).and_then(Value::as_str) == Some("phx_reply")
                    {
                        return Ok::<_, anyhow::Error>(frame);
                    }
                }
            }
            anyhow::bail!("closed before the join reply")
        })
        .await
        .context("join timed out")??;
        let status = reply.pointer("/4/status").and_then(Value::as_str);
        anyhow::ensure!(status == Some("ok"), "join refused: {reply}");
        Ok(ws)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn print_human(out: &Value) {
    println!("== wsbench {}", out["label"].as_str().unwrap_or(""));
    println!(
        "sockets      {} joined of {} ({} failed) in {} s over {} conversations; {} dropped while running",
        out["joined"],
        out["sockets"],
        out["connect_failed"],
        out["connect_s"],
        out["conversations"],
        out["dropped_while_running"]
    );
    if let Some(ws) = out.get("ws") {
        println!(
            "posted       {} at {}/s (201: {}, errors: {}, unsent {}), REST p99 {} ms",
            out["post"]["sent"],
            out["rate"],
            out["post"]["created"],
            out["post"]["errors"],
            out["post"]["unsent"],
            out["post"]["rest_p99_ms"]
        );
        println!(
            "received     {} frames in window ({}/s); missing {}, duplicates {}, before 201 {}",
            ws["arrivals_in_window"],
            ws["arrivals_per_s_in_window"],
            ws["missing"],
            ws["duplicates"],
            ws["before_201"]
        );
        for (name, key) in [
            ("201 -> socket ", "from_201"),
            ("commit->socket", "from_commit"),
            ("send -> socket", "from_send"),
        ] {
            let h = &ws[key];
            println!(
                "{name} ms p50 {}  p95 {}  p99 {}  max {}  (n {})",
                h["p50_ms"], h["p95_ms"], h["p99_ms"], h["max_ms"], h["n"]
            );
        }
    } else {
        println!(
            "server RSS   KiB {}; per socket {} KiB joined, {} KiB after hold; fds {}",
            out["server_rss_kib"],
            out["kib_per_socket_joined"],
            out["kib_per_socket_after_hold"],
            out["server_fds"]
        );
    }
}
