//! `chaos`: kills converger nodes with SIGKILL under load and checks afterwards that
//! nothing acknowledged was lost, nothing was stored twice, and every socket and the
//! webhook receiver got everything.
//!
//! The tool starts the nodes itself (`converger serve`, node `i` on `--port` + `i`),
//! so that it knows to the millisecond when each was killed and was ready again:
//!
//! 1. a webhook sink on `--sink` (answering after `--sink-delay-ms`) and, with `--proxy`, a TCP proxy between the last
//!    node and PostgreSQL; the nodes; over REST a `webhook` channel delivering to the
//!    sink, `--conversations` conversations and a client token for each;
//! 2. `--sockets-per-conversation` WebSocket clients per conversation, spread over the
//!    nodes, resuming with `last_seq` after every reconnect (`sockets`);
//! 3. REST load at `--rate`/s with an idempotency key per activity, retried with the
//!    same key on connection errors, timeouts, 429 and 5xx, on the next node (`load`);
//! 4. `--kills` times, every `--kill-min`..`--kill-max` s, SIGKILL to the last node,
//!    which is started again after `--restart-delay` s (with one node, that is the
//!    only node; with more, the others survive);
//! 5. with `--proxy` and `--cut` > 0, per `--cut-modes` entry: the proxy cuts the last
//!    node from the database for `--cut` s under load, while `/ready` of every node is
//!    probed every 100 ms;
//! 6. the load stops; a drain (at most `--drain` s) until the sink has every
//!    acknowledged activity, every socket is at its conversation's last `seq` and no
//!    delivery is pending; then the store is read back over REST (`verify`).
//!
//! Output: a human report, then one JSON line starting with `{`. Exit status 1 when
//! an invariant fails (the report names it), 2 when the run itself could not be made.

mod load;
mod nodes;
mod proxy;
mod report;
mod sink;
mod sockets;
mod verify;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use converger_loadgen::e2e::api::Api;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::load::Outcome;
use crate::nodes::{Cluster, NodeSpec};
use crate::proxy::{Link, Proxy};

/// How the proxy cuts the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CutMode {
    /// Close every connection and refuse new ones.
    Drop,
    /// Relay nothing, keep connections open (a partition).
    Hold,
}

impl CutMode {
    fn link(self) -> Link {
        match self {
            CutMode::Drop => Link::Drop,
            CutMode::Hold => Link::Hold,
        }
    }
}

/// Kill -9 under load: loss, duplicates, gaps, socket completeness, delivery, takeover.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// The converger binary.
    #[arg(long)]
    converger: PathBuf,
    /// `CONVERGER_DATABASE_URL` of the nodes (migrated, with a tenant).
    #[arg(long)]
    database_url: String,
    /// The killed node's database URL when it differs (through `--proxy`).
    #[arg(long)]
    victim_database_url: Option<String>,
    /// Nodes; the last is the one killed, the others survive.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Port of node 0 on 127.0.0.1; node i listens on port + i.
    #[arg(long, default_value_t = 4700)]
    port: u16,
    /// Address of the webhook sink (loopback).
    #[arg(long, default_value = "127.0.0.1:4790")]
    sink: SocketAddr,
    /// The sink answers each webhook after this many milliseconds.
    #[arg(long, default_value_t = 100)]
    sink_delay_ms: u64,
    /// Address of the proxy between the killed node and PostgreSQL (loopback); no
    /// proxy and no cut phase when unset.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// Where the proxy connects to.
    #[arg(long, default_value = "127.0.0.1:5432")]
    proxy_upstream: SocketAddr,
    /// Tenant API key (`x-api-key`).
    #[arg(long, env = "LOADGEN_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Activities posted per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Conversations the activities go to, round-robin.
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// WebSocket clients joined to each conversation, spread over the nodes.
    #[arg(long, default_value_t = 2)]
    sockets_per_conversation: usize,
    /// Activities in flight at most (retries included).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Seconds of load before the first kill's interval starts.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// SIGKILLs to send.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Shortest interval between kills, seconds.
    #[arg(long, default_value_t = 5.0)]
    kill_min: f64,
    /// Longest interval between kills, seconds.
    #[arg(long, default_value_t = 8.0)]
    kill_max: f64,
    /// Seconds between a kill and the restart of that node.
    #[arg(long, default_value_t = 1.0)]
    restart_delay: f64,
    /// Seconds each database cut lasts; 0 = no cut phase.
    #[arg(long, default_value_t = 15.0)]
    cut: f64,
    /// Cuts to make, in order (comma-separated): drop, hold.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "drop")]
    cut_modes: Vec<CutMode>,
    /// Longest drain after the load stops, seconds.
    #[arg(long, default_value_t = 120.0)]
    drain: f64,
    /// An activity not acknowledged after this many seconds of retries is abandoned.
    #[arg(long, default_value_t = 60.0)]
    give_up: f64,
    /// Target with one node: every conversation waiting for a delivery at a kill is
    /// delivered to again within this many seconds of the restarted node's `/ready`.
    #[arg(long, default_value_t = 5.0)]
    target_after_restart: f64,
    /// Target with a surviving node: the same within this many seconds of the kill.
    #[arg(long, default_value_t = 15.0)]
    target_after_kill: f64,
    /// During a cut, the cut node's `/ready` must answer 503 within this many seconds
    /// of the cut, and every `/ready` must answer within it.
    #[arg(long, default_value_t = 2.0)]
    ready_within: f64,
    /// Directory for node logs and the pid files (`chaos.pid` for this process,
    /// `nodes.pids` for the nodes).
    #[arg(long)]
    work: PathBuf,
    /// Seed of the kill intervals (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Free-form label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

/// One kill: when the signal went, when the node was started again and ready.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    pub at: Instant,
    pub restarted: Instant,
    pub ready: Instant,
}

/// One `/ready` probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub node: usize,
    pub sent: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// One database cut.
#[derive(Debug, Clone)]
pub struct Cut {
    pub mode: &'static str,
    pub start: Instant,
    pub end: Instant,
    pub probes: Vec<Probe>,
}

/// Everything a run collected, for the report.
pub struct Collected {
    pub t0: Instant,
    pub victim: usize,
    pub nodes: usize,
    pub conversations: Vec<String>,
    pub load: load::LoadLog,
    pub kills: Vec<Kill>,
    pub cuts: Vec<Cut>,
    pub sockets: Vec<sockets::SocketState>,
    pub arrivals: Vec<sink::Arrival>,
    pub malformed_webhooks: u64,
    pub stored: Vec<Vec<verify::Stored>>,
    pub pending_after_drain: u64,
    pub failed_after_drain: u64,
    pub drain: Duration,
    pub drained: bool,
    pub seed: u64,
    pub proxy_connections: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = check_args(&args) {
        eprintln!("chaos: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run_until_signal(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(
        args.conversations > 0 && args.sockets_per_conversation > 0,
        "--conversations and --sockets-per-conversation must be > 0"
    );
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be > 0"
    );
    anyhow::ensure!(
        args.kill_min > 0.0 && args.kill_max >= args.kill_min,
        "need 0 < --kill-min <= --kill-max"
    );
    for (name, v) in [
        ("--warmup", args.warmup),
        ("--restart-delay", args.restart_delay),
        ("--cut", args.cut),
        ("--drain", args.drain),
        ("--give-up", args.give_up),
    ] {
        anyhow::ensure!(v.is_finite() && v >= 0.0, "{name} must be >= 0");
    }
    for addr in [Some(args.sink), args.proxy].into_iter().flatten() {
        anyhow::ensure!(addr.ip().is_loopback(), "{addr}: loopback addresses only");
    }
    anyhow::ensure!(
        args.proxy.is_none() || args.victim_database_url.is_some(),
        "--proxy needs --victim-database-url (the database URL through the proxy)"
    );
    Ok(())
}

/// Runs until done or until SIGINT/SIGTERM; dropping the run on a signal kills the
/// nodes (they are spawned with `kill_on_drop`).
async fn run_until_signal(args: Args) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = run(args) => result,
        _ = term.recv() => anyhow::bail!("terminated"),
        _ = int.recv() => anyhow::bail!("interrupted"),
    }
}

/// xorshift64: enough to spread kills over an interval, and repeatable by seed.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed | 1);
    std::fs::create_dir_all(&args.work)?;
    std::fs::write(args.work.join("chaos.pid"), std::process::id().to_string())?;

    let sink = sink::start(args.sink, Duration::from_millis(args.sink_delay_ms))
        .await
        .context("starting the sink")?;
    let proxy = match args.proxy {
        Some(addr) => Some(
            Proxy::start(addr, args.proxy_upstream)
                .await
                .context("starting the proxy")?,
        ),
        None => None,
    };
    let victim = args.nodes - 1;
    let specs = (0..args.nodes)
        .map(|i| NodeSpec {
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                args.port + u16::try_from(i).unwrap_or(0),
            ),
            database_url: match (&args.victim_database_url, i == victim) {
                (Some(url), true) => url.clone(),
                _ => args.database_url.clone(),
            },
        })
        .collect::<Vec<_>>();
    let addrs: Vec<String> = specs.iter().map(|s| s.listen.to_string()).collect();
    let mut cluster = Cluster::new(
        args.converger.clone(),
        &args.work,
        args.work.join("nodes.pids"),
        specs,
    )?;
    for i in 0..args.nodes {
        cluster.start(i).await?;
    }
    let bases = cluster.bases();
    eprintln!(
        "chaos: {} node(s) ready ({}); killing node {victim}; seed {seed}",
        args.nodes,
        bases.join(", ")
    );

    // Set-up over REST.
    let api = Api::new(&bases[0], &args.api_key, secs(10.0), 32)?;
    let channel = api
        .create_channel(
            "chaos-webhook",
            "webhook",
            json!({"url": format!("http://{}/hook", args.sink), "timeout_ms": 5000}),
        )
        .await?;
    let conversations = api
        .create_conversations(&channel, args.conversations, 16)
        .await?;
    let tokens = api.create_tokens(&conversations, 16).await?;

    // Sockets.
    let (stop_sockets, stop_sockets_rx) = watch::channel(false);
    let clients = conversations
        .iter()
        .zip(&tokens)
        .enumerate()
        .flat_map(|(c, (id, token))| {
            (0..args.sockets_per_conversation).map(move |k| sockets::Client {
                conversation: c,
                conversation_id: id.clone(),
                token: token.clone(),
                own_node: (c * args.sockets_per_conversation + k) % args.nodes,
            })
        })
        .collect();
    let socket_states = sockets::spawn_all(clients, addrs, &stop_sockets_rx);
    let joined_by = Instant::now() + secs(60.0);
    while socket_states
        .iter()
        .any(|s| s.lock().expect("socket state poisoned").joins == 0)
    {
        anyhow::ensure!(Instant::now() < joined_by, "sockets not joined within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "chaos: webhook channel to http://{}/hook, {} conversations, {} sockets joined",
        args.sink,
        conversations.len(),
        socket_states.len()
    );

    // Load.
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(secs(10.0))
        .build()?;
    let (stop_load, stop_load_rx) = watch::channel(false);
    let t0 = Instant::now();
    let load = tokio::spawn(load::run(
        load::LoadConfig {
            client: http.clone(),
            nodes: bases.clone(),
            api_key: args.api_key.clone(),
            conversations: conversations.clone(),
            rate: args.rate,
            concurrency: args.concurrency,
            key_prefix: format!("chaos-{seed}"),
            give_up: secs(args.give_up),
        },
        stop_load_rx,
    ));
    tokio::time::sleep(secs(args.warmup)).await;

    // Kills.
    let mut kills = Vec::new();
    let (mut last_kill, mut last_ready) = (Instant::now(), Instant::now());
    for k in 0..args.kills {
        let gap = args.kill_min + rng.unit() * (args.kill_max - args.kill_min);
        let due = (last_kill + secs(gap)).max(last_ready + secs(1.0));
        tokio::time::sleep_until(due.into()).await;
        let at = cluster.kill(victim).await?;
        tokio::time::sleep(secs(args.restart_delay)).await;
        let restarted = Instant::now();
        let ready = cluster.start(victim).await?;
        eprintln!(
            "chaos: kill {}/{} at {:.1} s; node {victim} ready again {:.2} s later",
            k + 1,
            args.kills,
            (at - t0).as_secs_f64(),
            (ready - at).as_secs_f64()
        );
        kills.push(Kill {
            at,
            restarted,
            ready,
        });
        (last_kill, last_ready) = (at, ready);
    }

    // Database cuts.
    let mut cuts = Vec::new();
    if let Some(proxy) = proxy.as_ref().filter(|_| args.cut > 0.0) {
        for mode in &args.cut_modes {
            tokio::time::sleep(secs(5.0)).await;
            cuts.push(cut(proxy, *mode, secs(args.cut), &bases, victim).await);
            let c = cuts.last().expect("just pushed");
            eprintln!(
                "chaos: {} cut of node {victim} from the database, {:.1}..{:.1} s",
                c.mode,
                (c.start - t0).as_secs_f64(),
                (c.end - t0).as_secs_f64()
            );
        }
    }

    // Stop the load; drain.
    tokio::time::sleep(secs(2.0)).await;
    stop_load.send_replace(true);
    let load = load.await.context("the load task failed")?;
    eprintln!(
        "chaos: load stopped after {:.1} s; draining",
        t0.elapsed().as_secs_f64()
    );
    let reader = verify::Reader {
        client: http.clone(),
        base: bases[0].clone(),
        api_key: args.api_key.clone(),
    };
    let mut acked_top = vec![0i64; conversations.len()];
    for ack in &load.acks {
        acked_top[ack.conversation] = acked_top[ack.conversation].max(ack.seq);
    }
    let drain_start = Instant::now();
    let drained = loop {
        let arrived: std::collections::HashSet<String> =
            sink.arrivals().into_iter().map(|a| a.activity).collect();
        let sink_behind = load
            .acks
            .iter()
            .filter(|a| !arrived.contains(&a.id))
            .count();
        let sockets_behind = socket_states
            .iter()
            .filter(|s| {
                let s = s.lock().expect("socket state poisoned");
                s.last_seq < acked_top[s.conversation]
            })
            .count();
        let pending = reader.count_deliveries("pending").await.unwrap_or(u64::MAX);
        if sink_behind == 0 && sockets_behind == 0 && pending == 0 {
            break true;
        }
        if drain_start.elapsed() >= secs(args.drain) {
            eprintln!(
                "chaos: drain gave up: sink behind by {sink_behind}, {sockets_behind} sockets behind, {pending} deliveries pending"
            );
            break false;
        }
        tokio::time::sleep(secs(1.0)).await;
    };
    let drain = drain_start.elapsed();

    // Read the store back.
    let mut stored = Vec::with_capacity(conversations.len());
    for id in &conversations {
        stored.push(reader.activities(id).await?);
    }
    let pending_after_drain = reader.count_deliveries("pending").await?;
    let failed_after_drain = reader.count_deliveries("failed").await?;

    stop_sockets.send_replace(true);
    cluster.stop_all().await;
    let collected = Collected {
        t0,
        victim,
        nodes: args.nodes,
        conversations,
        load,
        kills,
        cuts,
        sockets: socket_states
            .iter()
            .map(|s| s.lock().expect("socket state poisoned").clone())
            .collect(),
        arrivals: sink.arrivals(),
        malformed_webhooks: sink.malformed(),
        stored,
        pending_after_drain,
        failed_after_drain,
        drain,
        drained,
        seed,
        proxy_connections: proxy.as_ref().map_or(0, Proxy::accepted),
    };
    let (report, passed) = report::build(&collected, &report::Targets::from(&args));
    report::print_human(&report);
    println!("{report}");
    Ok(passed)
}

impl From<&Args> for report::Targets {
    fn from(args: &Args) -> Self {
        Self {
            label: args.label.clone(),
            rate: args.rate,
            restart_delay: args.restart_delay,
            after_restart: args.target_after_restart,
            after_kill: args.target_after_kill,
            ready_within: args.ready_within,
            cut: args.cut,
        }
    }
}

/// One cut of the killed node from the database, with `/ready` of every node probed
/// every 100 ms from a second before it until three seconds after that node is ready
/// again (at most a minute).
async fn cut(
    proxy: &Proxy,
    mode: CutMode,
    length: Duration,
    bases: &[String],
    victim: usize,
) -> Cut {
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let (stop, stop_rx) = watch::channel(false);
    let prober = tokio::spawn(probe_ready(bases.to_vec(), Arc::clone(&probes), stop_rx));
    tokio::time::sleep(secs(1.0)).await;
    let start = Instant::now();
    proxy.set(mode.link());
    tokio::time::sleep(length).await;
    let end = Instant::now();
    proxy.set(Link::Open);
    let give_up = end + secs(60.0);
    while Instant::now() < give_up {
        let back =
            probes.lock().expect("probe log poisoned").iter().any(|p| {
                p.node == victim && p.sent >= end && p.outcome == Outcome::Status(200, None)
            });
        if back {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(secs(3.0)).await;
    stop.send_replace(true);
    let _ = prober.await;
    let probes = std::mem::take(&mut *probes.lock().expect("probe log poisoned"));
    Cut {
        mode: mode.link().name(),
        start,
        end,
        probes,
    }
}

async fn probe_ready(
    bases: Vec<String>,
    log: Arc<Mutex<Vec<Probe>>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(secs(5.0))
        .pool_max_idle_per_host(0)
        .build()
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut probes = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = load::stopped(&mut stop) => break,
        }
        for (node, base) in bases.iter().enumerate() {
            let (client, url, log) = (client.clone(), format!("{base}/ready"), Arc::clone(&log));
            probes.spawn(async move {
                let sent = Instant::now();
                let outcome = match client.get(&url).send().await {
                    Ok(r) => Outcome::Status(r.status().as_u16(), None),
                    Err(e) if e.is_timeout() => Outcome::Transport("timeout"),
                    Err(e) if e.is_connect() => Outcome::Transport("connect"),
                    Err(_) => Outcome::Transport("transport"),
                };
                log.lock().expect("probe log poisoned").push(Probe {
                    node,
                    sent,
                    latency: sent.elapsed(),
                    outcome,
                });
            });
        }
        while probes.try_join_next().is_some() {}
    }
    while probes.join_next().await.is_some() {}
}
