//! A `converger serve` child process: another node on a test's database.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use super::{JWT_SECRET, SECRET_KEY, eventually};

/// A node in a process of its own, killed when dropped.
pub struct Node {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Node {
    /// Starts `converger serve` on `database_url`, with the test JWT secret so tokens
    /// issued by any node of the test work on this one, and the test encryption key.
    pub fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &[], Stdio::null())
    }

    /// Like [`Node::start`], with more (or overriding) environment variables and
    /// the node's log output (its stdout) sent to `log`.
    pub fn start_with(database_url: &str, env: &[(&str, &str)], log: Stdio) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_converger"))
            .arg("serve")
            .env("CONVERGER_DATABASE_URL", database_url)
            .env("CONVERGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("CONVERGER_JWT_SECRET", JWT_SECRET)
            .env("CONVERGER_SECRET_KEY", SECRET_KEY)
            .env("CONVERGER_DELIVERY_LEASE_SECS", "2")
            .env("CONVERGER_DELIVERY_CONCURRENCY", "16")
            .env("CONVERGER_EGRESS_ALLOW", super::LOOPBACK)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start converger");
        Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until the node answers `/ready`.
    pub async fn ready(&self, http: &reqwest::Client) {
        eventually(Duration::from_secs(30), "the node to be ready", || async {
            let r = http.get(format!("{}/ready", self.base)).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
    }

    /// SIGKILL: no shutdown, leases stay behind.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM: the node shuts down gracefully; see [`Node::exited`].
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        eventually(timeout, "the node to exit", || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
