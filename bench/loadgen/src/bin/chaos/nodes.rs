//! The converger nodes of a run: child processes of this tool, started with
//! `converger serve`, killed with SIGKILL, started again, and stopped with SIGTERM at
//! the end.
//!
//! Every pid is appended to a file as soon as the process exists, so that the script
//! that started this tool can end exactly those processes if this tool itself dies.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

/// Longest a node may take from spawn to a 200 from `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One node: where it listens and which database URL it is given.
pub struct NodeSpec {
    pub listen: SocketAddr,
    pub database_url: String,
}

struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    log: PathBuf,
}

/// The nodes of a run, indexed from 0.
pub struct Cluster {
    converger: PathBuf,
    pidfile: PathBuf,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Cluster {
    /// Nodes `specs`, none started; logs go to `work/node<i>.log`, pids to `pidfile`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        converger: PathBuf,
        work: &Path,
        pidfile: PathBuf,
        specs: Vec<NodeSpec>,
    ) -> anyhow::Result<Self> {
        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Node {
                spec,
                child: None,
                log: work.join(format!("node{i}.log")),
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Self {
            converger,
            pidfile,
            nodes,
            http,
        })
    }

    /// Base URL of node `i`.
    pub fn base(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].spec.listen)
    }

    /// Base URLs of every node, in order.
    pub fn bases(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.base(i)).collect()
    }

    /// Starts node `i` and waits for `/ready`; returns when it answered 200.
    ///
    /// # Errors
    /// The process cannot be spawned, exits, or is not ready in time.
    pub async fn start(&mut self, i: usize) -> anyhow::Result<Instant> {
        let node = &mut self.nodes[i];
        anyhow::ensure!(node.child.is_none(), "node {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let child = Command::new(&self.converger)
            .arg("serve")
            .env("CONVERGER_LISTEN", node.spec.listen.to_string())
            .env("CONVERGER_DATABASE_URL", &node.spec.database_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.converger.display()))?;
        if let Some(pid) = child.id() {
            let mut pids = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.pidfile)?;
            writeln!(pids, "{pid}")?;
        }
        node.child = Some(child);
        self.wait_ready(i).await
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<Instant> {
        let url = format!("{}/ready", self.base(i));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(Instant::now());
            }
            let node = &mut self.nodes[i];
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                node.child = None;
                anyhow::bail!(
                    "node {i} exited ({status}) before it was ready; log: {}",
                    node.log.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {i} not ready after {READY_TIMEOUT:?}; log: {}",
                node.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `i` with SIGKILL and reaps it; returns the moment the signal was
    /// sent.
    ///
    /// # Errors
    /// The node is not running, or the signal cannot be sent.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<Instant> {
        let mut child = self.nodes[i]
            .child
            .take()
            .with_context(|| format!("node {i} is not running"))?;
        let at = Instant::now();
        child.start_kill().context("SIGKILL")?;
        child.wait().await?;
        Ok(at)
    }

    /// Stops every running node with SIGTERM (graceful shutdown), killing any that is
    /// still there after [`STOP_TIMEOUT`].
    pub async fn stop_all(&mut self) {
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "chaos: a node ignored SIGTERM for {STOP_TIMEOUT:?}; killing it ({})",
                    node.log.display()
                );
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}
