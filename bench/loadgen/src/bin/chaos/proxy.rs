//! A TCP proxy between one node and PostgreSQL that can cut the link.
//!
//! Two ways to cut:
//! - [`Link::Drop`]: every proxied connection is closed at once and new ones are
//!   closed as soon as they are accepted (the database host went away and its
//!   connections were reset);
//! - [`Link::Hold`]: nothing is relayed in either direction and new connections are
//!   accepted but not connected on (a network partition: packets are lost, no
//!   connection is told). When the link opens again, what was held is relayed, as TCP
//!   does after a short partition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of the proxied link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow.
    Open,
    /// Connections are closed, new ones too.
    Drop,
    /// Nothing flows; connections stay open.
    Hold,
}

impl Link {
    /// The cut's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Link::Open => "open",
            Link::Drop => "drop",
            Link::Hold => "hold",
        }
    }
}

/// A running proxy; the accept loop lives as long as the process.
pub struct Proxy {
    link: watch::Sender<Link>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on `listen` and relays every connection to `upstream`.
    ///
    /// # Errors
    /// `listen` cannot be bound.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let (link, _) = watch::channel(Link::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, count) = (link.clone(), Arc::clone(&accepted));
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(client, upstream, tx.subscribe()));
            }
        });
        Ok(Self { link, accepted })
    }

    /// Sets the link's state; connections react at once.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if !wait_open(&mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending ends the connection: PostgreSQL connections are not
    // half-closed.
    tokio::select! {
        () = pipe(client_read, server_write, link.clone()) => {}
        () = pipe(server_read, client_write, link) => {}
    }
}

/// Copies `from` to `to` while the link is open; holds bytes while it is held; returns
/// when either side closes or the link drops.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = dropped(&mut link) => return,
        };
        if !wait_open(&mut link).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves when the link is (or becomes) [`Link::Drop`].
async fn dropped(link: &mut watch::Receiver<Link>) {
    loop {
        if *link.borrow_and_update() == Link::Drop {
            return;
        }
        if link.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits while the link is held: `true` once it is open, `false` if it drops.
async fn wait_open(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Open => return true,
            Link::Drop => return false,
            Link::Hold => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}
