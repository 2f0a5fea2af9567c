//! Connection admission: what a connection must respect before HTTP is spoken on it.
//!
//! Every accepted TCP connection passes [`LimitAcceptor`] first, plain or TLS alike:
//!
//! - **Node cap** (`CONVERGER_MAX_CONNECTIONS`): connections held open at once, TLS
//!   handshakes, kept-alive HTTP and WebSockets included. Beyond it a new connection
//!   is answered `503 too_many_connections` and closed, so the node refuses well before
//!   it runs out of file descriptors and `/health` stays answerable once load ebbs.
//! - **Address cap** (`CONVERGER_MAX_CONNECTIONS_PER_IP`): connections from one peer
//!   address; beyond it `429 too_many_connections`. Trusted proxies carry many clients
//!   and are not counted; WebSockets through them are counted per forwarded client
//!   address instead ([`ConnectionLimits::admit_forwarded`]).
//! - **Idle timeout** (`CONVERGER_IDLE_TIMEOUT_SECS`): a connection that moves no byte
//!   in either direction for that long is closed ([`Guarded`]), whatever it is waiting
//!   on: a request body trickling in, a response the client does not read, a silent
//!   HTTP/2 connection.
//!
//! Slow request heads are hyper's business (`header_read_timeout`, set by the
//! composition root), which for HTTP/1 is also how long a kept-alive connection waits
//! for its next request.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use crate::access;
use crate::config::Config;

/// How long a refused connection gets to take its 503 before it is closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refusals are logged at most this often (a flood would drown the log); the
/// `converger_connections_refused_total` counter counts each one.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The share of the open-file limit taken as the default node cap; the rest is left
/// for database connections, outbound deliveries and files.
const DEFAULT_CAP_SHARE: (u64, u64) = (3, 4);
/// The default node cap where the open-file limit cannot be read.
const FALLBACK_CAP: usize = 768;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `CONVERGER_MAX_CONNECTIONS` connections.
    Node,
    /// The client address holds `CONVERGER_MAX_CONNECTIONS_PER_IP` connections.
    Address,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Node => "this node holds as many connections as it may; retry shortly",
            Refused::Address => "too many connections from this address",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refused::Node => "node",
            Refused::Address => "address",
        }
    }
}

/// The caps of one node, shared by its acceptor and its socket endpoints.
#[derive(Debug)]
pub struct ConnectionLimits {
    node: Arc<Semaphore>,
    max: usize,
    per_ip: usize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    trusted: Vec<IpNet>,
    idle: Duration,
    last_logged: AtomicU64,
    started: Instant,
}

impl ConnectionLimits {
    pub fn new(config: &Config) -> Self {
        let max = config
            .max_connections
            .unwrap_or_else(default_max_connections);
        Self {
            node: Arc::new(Semaphore::new(max)),
            max,
            per_ip: config.max_connections_per_ip,
            by_ip: Mutex::new(HashMap::new()),
            trusted: config.trusted_proxies.clone(),
            idle: Duration::from_secs(config.idle_timeout_secs),
            last_logged: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The node cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.node.available_permits()
    }

    /// Admits a connection from `peer`, or says why not. The admission is held for
    /// the connection's life.
    ///
    /// # Errors
    /// The node or the address is at its cap.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refused> {
        let peer = access::canonical(peer);
        let slot = if access::is_trusted_proxy(peer, &self.trusted) {
            None
        } else {
            Some(self.take_slot(peer)?)
        };
        let permit = self
            .node
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Node)?;
        Ok(Admission {
            _permit: permit,
            _slot: slot,
        })
    }

    /// For a WebSocket whose connection came through a trusted proxy from `client`:
    /// counts it against the client's address cap, which its connection was not.
    /// `None` (nothing to hold) when the connection was counted already.
    ///
    /// # Errors
    /// The client address is at its cap.
    pub fn admit_forwarded(
        self: &Arc<Self>,
        peer: IpAddr,
        client: IpAddr,
    ) -> Result<Option<AddressSlot>, Refused> {
        let peer = access::canonical(peer);
        if !access::is_trusted_proxy(peer, &self.trusted) {
            return Ok(None);
        }
        self.take_slot(access::canonical(client)).map(Some)
    }

    /// Admits a long-poll session of `client`: a connection that outlives its HTTP
    /// requests, counted as one against the node cap and the client's address cap.
    ///
    /// # Errors
    /// The node or the address is at its cap.
    pub fn admit_session(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Admission, Refused> {
        let slot = client
            .map(|ip| self.take_slot(access::canonical(ip)))
            .transpose()?;
        let permit = self
            .node
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Node)?;
        Ok(Admission {
            _permit: permit,
            _slot: slot,
        })
    }

    fn take_slot(self: &Arc<Self>, ip: IpAddr) -> Result<AddressSlot, Refused> {
        if self.per_ip == 0 {
            return Ok(AddressSlot { limits: None, ip });
        }
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip {
            return Err(Refused::Address);
        }
        *count += 1;
        Ok(AddressSlot {
            limits: Some(self.clone()),
            ip,
        })
    }

    fn release_slot(&self, ip: IpAddr) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&ip);
            }
        }
    }

    /// Counts a refusal, and logs it unless another was logged moments ago.
    pub fn record_refusal(&self, refused: Refused, peer: IpAddr) {
        crate::metrics::record_connection_refused(refused.label());
        let now = self.started.elapsed().as_secs();
        let last = self.last_logged.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + REFUSAL_LOG_INTERVAL.as_secs();
        if due
            && self
                .last_logged
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %peer,
                reason = refused.label(),
                open = self.open(),
                max = self.max,
                per_ip = self.per_ip,
                "connection refused: at the connection cap (further refusals counted, not logged, for a while)"
            );
        }
    }
}

/// Three quarters of the soft open-file limit.
fn default_max_connections() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(limit) => {
            let cap = limit.saturating_mul(DEFAULT_CAP_SHARE.0) / DEFAULT_CAP_SHARE.1;
            usize::try_from(cap).unwrap_or(usize::MAX).max(1)
        }
        None => FALLBACK_CAP,
    }
}

/// A connection's place under the caps; released when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
}

/// One connection counted against an address; released when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    limits: Option<Arc<ConnectionLimits>>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some(limits) = &self.limits {
            limits.release_slot(self.ip);
        }
    }
}

/// The acceptor in front of every connection: admits it under the caps, sets
/// `TCP_NODELAY`, and wraps it in the idle timer. A refused plain-HTTP connection is
/// answered with a complete HTTP/1.1 error before it is closed; a refused TLS
/// connection is closed at once (it cannot read plain text).
#[derive(Debug, Clone)]
pub struct LimitAcceptor {
    limits: Arc<ConnectionLimits>,
    answer_refusals: bool,
}

impl LimitAcceptor {
    pub fn new(limits: Arc<ConnectionLimits>, answer_refusals: bool) -> Self {
        Self {
            limits,
            answer_refusals,
        }
    }
}

type AcceptFuture<S> = Pin<Box<dyn Future<Output = io::Result<(Guarded<TcpStream>, S)>> + Send>>;

impl<S: Send + 'static> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = S;
    type Future = AcceptFuture<S>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let limits = self.limits.clone();
        let answer = self.answer_refusals;
        Box::pin(async move {
            // Small frames (socket pushes, API answers) should not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let peer = stream.peer_addr()?.ip();
            match limits.admit(peer) {
                Ok(admission) => Ok((Guarded::new(stream, limits.idle, admission), service)),
                Err(refused) => {
                    limits.record_refusal(refused, peer);
                    if answer {
                        refuse(stream, refused).await;
                    }
                    Err(io::Error::other("connection refused at the connection cap"))
                }
            }
        })
    }
}

/// Answers a refused connection with its error and closes it, giving up on a client
/// that does not take the answer promptly.
async fn refuse(mut stream: TcpStream, refused: Refused) {
    let response = refusal_response(refused);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The complete HTTP/1.1 answer to a refused connection, the API's error shape.
fn refusal_response(refused: Refused) -> String {
    let err = ApiError::too_many_connections(refused);
    let body = serde_json::to_string(&err.body()).unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: {}\r\nconnection: close\r\n\r\n{body}",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or_default(),
        body.len(),
        err.retry_after.unwrap_or(1),
    )
}

/// A connection under the idle timer, holding its admission until dropped. Reads and
/// writes that move bytes restart the timer; when the connection waits (to read or
/// to write) past it, the wait ends with `TimedOut`, which closes the connection.
pub struct Guarded<T> {
    inner: T,
    idle: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    _admission: Admission,
}

impl<T> Guarded<T> {
    fn new(inner: T, idle: Duration, admission: Admission) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            _admission: admission,
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// Whether the connection has been idle for the whole timeout; otherwise the timer
    /// is armed for the current deadline and wakes this task then.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_active + self.idle;
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// A write's result: bytes written restart the timer, a wait may time out.
    fn wrote(
        &mut self,
        polled: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_or_timeout(cx),
        }
    }

    fn pending_or_timeout<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if self.idle_expired(cx) {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            )))
        } else {
            Poll::Pending
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_timeout(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending_or_timeout(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.pending_or_timeout(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, trusted: &str) -> Arc<ConnectionLimits> {
        let mut config = Config::new("sqlite::memory:");
        config.max_connections = Some(max);
        config.max_connections_per_ip = per_ip;
        config.trusted_proxies = access::parse_cidrs(trusted).unwrap();
        Arc::new(ConnectionLimits::new(&config))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn node_cap_refuses_until_a_connection_ends() {
        let limits = limits(2, 0, "");
        let a = limits.admit(ip("192.0.2.1")).unwrap();
        let _b = limits.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(limits.admit(ip("192.0.2.3")).unwrap_err(), Refused::Node);
        assert_eq!(limits.open(), 2);
        drop(a);
        assert!(limits.admit(ip("192.0.2.3")).is_ok());
    }

    #[test]
    fn address_cap_counts_each_address_and_spelling_once() {
        let limits = limits(100, 2, "");
        let _a = limits.admit(ip("192.0.2.1")).unwrap();
        let b = limits.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(limits.admit(ip("192.0.2.1")).unwrap_err(), Refused::Address);
        assert!(limits.admit(ip("192.0.2.9")).is_ok());
        drop(b);
        let _c = limits.admit(ip("192.0.2.1")).unwrap();
        // A refusal by the address cap takes no node permit.
        assert_eq!(limits.open(), 2);
    }

    #[test]
    fn address_refused_by_the_node_cap_gives_its_slot_back() {
        let limits = limits(1, 5, "");
        let _a = limits.admit(ip("192.0.2.1")).unwrap();
        for _ in 0..10 {
            assert_eq!(limits.admit(ip("192.0.2.2")).unwrap_err(), Refused::Node);
        }
        assert!(limits.by_ip.lock().unwrap().get(&ip("192.0.2.2")).is_none());
    }

    #[test]
    fn trusted_proxies_are_counted_per_forwarded_client() {
        let limits = limits(100, 1, "10.0.0.0/8");
        let proxy = ip("10.0.0.1");
        let _c1 = limits.admit(proxy).unwrap();
        let _c2 = limits.admit(proxy).unwrap();
        let s1 = limits.admit_forwarded(proxy, ip("198.51.100.7")).unwrap();
        assert!(s1.is_some());
        assert_eq!(
            limits
                .admit_forwarded(proxy, ip("198.51.100.7"))
                .unwrap_err(),
            Refused::Address
        );
        // A direct client's socket was counted with its connection.
        assert!(
            limits
                .admit_forwarded(ip("198.51.100.7"), ip("198.51.100.7"))
                .unwrap()
                .is_none()
        );
        drop(s1);
        assert!(limits.admit_forwarded(proxy, ip("198.51.100.7")).is_ok());
    }

    #[test]
    fn default_cap_leaves_room_under_the_open_file_limit() {
        let cap = default_max_connections();
        if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            assert!((cap as u64) < limit, "{cap} < {limit}");
        }
        assert!(cap >= 1);
    }

    #[test]
    fn refusals_are_complete_http_answers_with_an_api_error() {
        for (refused, status) in [(Refused::Node, "503"), (Refused::Address, "429")] {
            let response = refusal_response(refused);
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains("retry-after: 1"));
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
    }
}
