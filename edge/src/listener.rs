//! Serving a router on a listening socket, as an edge on the internet must and `axum::serve` does not:
//! a deadline for every request's headers (the first one included, so an idle or slow connection cannot
//! sit on a descriptor), a cap on open connections per node and per client address, an accept loop that
//! backs off when descriptors run out instead of spinning, and a graceful stop.
//!
//! A connection's place under the caps is held by its socket, so an upgraded WebSocket keeps it for as
//! long as it lives. Connections over a cap get a short HTTP answer in the servlet's form and are closed:
//! 503 with Guacamole status 513 (the node is full) or 429 with 797 (this client has too many).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::MapRequest;
use tracing::{debug, trace, warn};

use deskbroker_shared::cidr::Cidr;

use crate::client::Peer;
use crate::config::Connections;
use crate::defaults::{ACCEPT_BACKOFF, ACCEPT_ERROR_LOG_EVERY, REFUSAL_LINGER, REFUSALS_ANSWERED};

/// What a connection over the node's cap is told before it is closed.
const NODE_FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Guacamole-Status-Code: 513\r\nGuacamole-Error-Message: Server busy.\r\n\
    Content-Length: 13\r\nConnection: close\r\n\r\nServer busy.\n";

/// What a connection over its client's cap is told before it is closed.
const CLIENT_FULL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\
    Guacamole-Status-Code: 797\r\nGuacamole-Error-Message: Too many connections.\r\n\
    Content-Length: 22\r\nConnection: close\r\n\r\nToo many connections.\n";

/// Serves `router` on `listener` until `stop`, then lets requests in progress finish (upgraded
/// connections are the tunnels' own and end with them) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    stop: CancellationToken,
) -> io::Result<()> {
    let caps = Caps::new(&limits);
    let trusted: Arc<[Cidr]> = limits.trusted_proxies.clone().into();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connections = TaskTracker::new();
    let refusals = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                errors.note(&error).await;
                continue;
            }
        };
        trace!(%peer, "connection accepted");
        let Some(slot) = caps.take(peer.ip()) else {
            let answer = caps.refusal(peer.ip());
            match refusals.clone().try_acquire_owned() {
                Ok(permit) => connections.spawn(refuse(stream, answer, permit)),
                // Too many refusals at once to answer each: the rest are just closed.
                Err(_) => continue,
            };
            continue;
        };
        // Small writes go at once: a keystroke's echo or a frame's last bytes must not wait, under Nagle's
        // algorithm, for the ACK of what went before (up to the peer's 40 ms delayed ACK).
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "TCP_NODELAY not set");
        }
        let io = TokioIo::new(Counted {
            stream,
            _slot: slot,
        });
        // Each request learns its connection's peer, for the logs (`client.rs`).
        let client = Peer::new(peer.ip(), trusted.clone());
        let with_peer = MapRequest::new(router.clone(), move |mut request: Request<_>| {
            request.extensions_mut().insert(client.clone());
            request
        });
        let service = TowerToHyperService::new(with_peer);
        let connection = http.serve_connection(io, service).with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                debug!(%peer, %error, "connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Answers a refused connection, then reads what it sent for at most [`REFUSAL_LINGER`] before closing:
/// closing a socket with unread input resets it, and a reset would take the answer with it.
async fn refuse(mut stream: TcpStream, answer: &'static [u8], _permit: OwnedSemaphorePermit) {
    debug!(status = %String::from_utf8_lossy(&answer[9..12]), "connection refused");
    let answered = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answered).await;
}

/// Open connections by client address.
type Clients = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The node's and the clients' connection caps.
struct Caps {
    node: Arc<Semaphore>,
    per_client: usize,
    trusted: Vec<Cidr>,
    clients: Clients,
}

impl Caps {
    fn new(limits: &Connections) -> Self {
        Self {
            node: Arc::new(Semaphore::new(limits.max)),
            per_client: limits.per_client,
            trusted: limits.trusted_proxies.clone(),
            clients: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or none when a cap is reached. Trusted proxies carry many
    /// clients, so only the node's cap applies to them.
    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let node = self.node.clone().try_acquire_owned().ok()?;
        let ip = ip.to_canonical();
        if self.trusted.iter().any(|proxy| proxy.contains(ip)) {
            return Some(Slot {
                _node: node,
                client: None,
            });
        }
        let mut clients = lock(&self.clients);
        let count = clients.entry(ip).or_default();
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        let client = Some((self.clients.clone(), ip));
        Some(Slot {
            _node: node,
            client,
        })
    }

    /// Why a connection from `ip` was refused.
    fn refusal(&self, ip: IpAddr) -> &'static [u8] {
        match self.node.available_permits() {
            0 => NODE_FULL,
            _ if lock(&self.clients).get(&ip.to_canonical()) >= Some(&self.per_client) => {
                CLIENT_FULL
            }
            _ => NODE_FULL,
        }
    }
}

fn lock(clients: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    // Single map operations only: the counts cannot be left half-updated.
    clients.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place under the caps, given back when the connection's socket is dropped.
struct Slot {
    _node: OwnedSemaphorePermit,
    client: Option<(Clients, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((clients, ip)) = &self.client {
            let mut clients = lock(clients);
            if let Some(count) = clients.get_mut(ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    clients.remove(ip);
                }
            }
        }
    }
}

/// An accepted socket that holds its connection's [`Slot`], wherever the socket goes (into hyper, then
/// into an upgraded WebSocket).
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Failed accepts: one that concerns a single connection is skipped; running out of descriptors (or
/// memory) pauses accepting for [`ACCEPT_BACKOFF`], while open connections go on being served. The log
/// says so once per [`ACCEPT_ERROR_LOG_EVERY`], with a count, instead of once per attempt.
#[derive(Default)]
struct AcceptErrors {
    unlogged: u64,
    logged: Option<Instant>,
}

impl AcceptErrors {
    async fn note(&mut self, error: &io::Error) {
        use io::ErrorKind::*;
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
        ) {
            debug!(%error, "accept failed for one connection");
            return;
        }
        self.unlogged += 1;
        let due = self
            .logged
            .is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_EVERY);
        if due {
            warn!(%error, failures = self.unlogged, "cannot accept connections; backing off");
            (self.unlogged, self.logged) = (0, Some(Instant::now()));
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The peer listener's limits: other nodes of the cluster are trusted clients, with the same header
/// deadline.
pub fn for_peers(header_timeout: Duration) -> Connections {
    Connections {
        header_timeout,
        max: Semaphore::MAX_PERMITS,
        per_client: usize::MAX,
        trusted_proxies: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: usize, per_client: usize, trusted: &[&str]) -> Caps {
        Caps::new(&Connections {
            header_timeout: Duration::from_secs(1),
            max,
            per_client,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn connections_are_capped_per_node_and_per_client_until_they_end() {
        let caps = caps(3, 2, &["10.0.0.0/8"]);
        let (a, b) = (
            "192.0.2.1".parse().unwrap(),
            "::ffff:192.0.2.2".parse().unwrap(),
        );
        let first = caps.take(a).unwrap();
        let _second = caps.take(a).unwrap();
        assert!(caps.take(a).is_none(), "a client's third connection");
        assert_eq!(caps.refusal(a), CLIENT_FULL);
        drop(first);
        let _third = caps.take(a).unwrap();
        let _other = caps.take(b).unwrap();
        assert!(caps.take(b).is_none(), "the node is full");
        assert_eq!(caps.refusal(b), NODE_FULL);
    }

    #[test]
    fn a_trusted_proxy_counts_against_the_node_only() {
        let caps = caps(5, 1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<Slot> = (0..5).map(|_| caps.take(proxy).unwrap()).collect();
        assert!(caps.take(proxy).is_none());
        drop(held);
        assert!(lock(&caps.clients).is_empty());
    }
}
