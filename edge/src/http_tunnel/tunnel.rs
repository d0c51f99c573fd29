//! One HTTP tunnel and the task that owns its guacd socket, plus the node's map of them by token.
//!
//! The owner task is the only holder of the guacd socket. It moves guacd's output, as batches of whole
//! instructions, into a small bounded queue that read requests drain one at a time (the queue's lock is the
//! servlet's reader lock), and it writes what write requests queue for guacd. It ends the tunnel on guacd
//! EOF or error, on the idle timeout, on a stop, or when killed; the socket is released as it returns. After
//! guacd ends, the tunnel stays registered until a read has delivered everything (then requests get 404/516,
//! the client's normal end of stream) or until the idle timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use deskbroker_shared::ids::{TokenDigest, TunnelId, TunnelToken};
use deskbroker_shared::instruction::Instruction;

use crate::defaults::{
    HTTP_INPUT_QUEUE, HTTP_OUTPUT_QUEUE, WRITES_STOPPED_MAX, WRITES_STOPPED_MIN,
};
use crate::error::TunnelError;
use crate::guac::Opened;
use crate::local::Traffic;
use crate::node::Node;
use crate::registration::Registration;
use crate::upstream::Guacd;

/// The node's open HTTP tunnels, found by the digest of their `Guacamole-Tunnel-Token`: a cheap `Clone`
/// handle.
#[derive(Clone, Default)]
pub struct HttpTunnels {
    map: Arc<Mutex<HashMap<TokenDigest, Arc<HttpTunnel>>>>,
}

impl HttpTunnels {
    pub fn get(&self, token: &TunnelToken) -> Option<Arc<HttpTunnel>> {
        self.lock().get(&token.digest()).cloned()
    }

    /// Enters a tunnel in the map for as long as the returned entry lives.
    fn insert(&self, digest: TokenDigest, tunnel: Arc<HttpTunnel>) -> Entry {
        self.lock().insert(digest, tunnel);
        Entry {
            tunnels: self.clone(),
            digest,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Arc<HttpTunnel>>> {
        // Only single inserts, removes and lookups happen under this lock; none can leave it half done.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct HttpTunnel {
    pub id: TunnelId,
    /// Input that would control the desktop is dropped.
    pub read_only: bool,
    /// What the tunnel moved, and when a person last gave input.
    pub traffic: Arc<Traffic>,
    /// guacd's output; holding this lock is holding the tunnel's one active read.
    output: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    /// Read requests waiting for the lock: the active read gives way once it has sent something.
    readers_waiting: AtomicUsize,
    reader_arrived: Notify,
    /// The node that forwarded the active read is going away: end that read at once, at an instruction
    /// boundary, so that the client's next read goes to a node that stays.
    release: AtomicBool,
    input: mpsc::Sender<Bytes>,
    /// Write requests take turns, so their instructions reach guacd in request order.
    writer: tokio::sync::Mutex<()>,
    /// When they did.
    writes: Mutex<Cadence>,
    last_access: Mutex<Instant>,
    /// Cancelled when guacd has gone (writes are then dropped) …
    upstream_done: CancellationToken,
    /// … and when the tunnel is deregistered (requests then get 404/516).
    closed: CancellationToken,
}

/// A tunnel's place in the map, given up when it is dropped.
struct Entry {
    tunnels: HttpTunnels,
    digest: TokenDigest,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.tunnels.lock().remove(&self.digest);
    }
}

impl HttpTunnel {
    /// Enters a registered tunnel, which any node finds by the digest of `token`, in `tunnels` and starts
    /// its owner task; returns its id.
    pub fn open(
        node: &Node,
        tunnels: &HttpTunnels,
        opened: Opened,
        token: &TunnelToken,
    ) -> TunnelId {
        let Opened {
            guacd,
            session,
            registration,
        } = opened;
        let id = registration.record().id;
        let digest = token.digest();
        let (output_tx, output_rx) = mpsc::channel(HTTP_OUTPUT_QUEUE);
        let (input_tx, input_rx) = mpsc::channel(HTTP_INPUT_QUEUE);
        let tunnel = Arc::new(HttpTunnel {
            id,
            read_only: session.read_only,
            traffic: registration.traffic().clone(),
            output: Arc::new(tokio::sync::Mutex::new(output_rx)),
            readers_waiting: AtomicUsize::new(0),
            reader_arrived: Notify::new(),
            release: AtomicBool::new(false),
            input: input_tx,
            writer: tokio::sync::Mutex::new(()),
            writes: Mutex::new(Cadence::new()),
            last_access: Mutex::new(Instant::now()),
            upstream_done: CancellationToken::new(),
            closed: CancellationToken::new(),
        });
        let owner = Owner {
            entry: tunnels.insert(digest, tunnel.clone()),
            tunnel,
            registration,
            node: node.clone(),
        };
        node.spawn_tunnel(owner.run(guacd, output_tx, input_rx));
        id
    }

    pub fn touch(&self) {
        *self.last_access.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_deadline(&self, timeout: Duration) -> Instant {
        *self.last_access.lock().unwrap_or_else(|p| p.into_inner()) + timeout
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub fn is_upstream_done(&self) -> bool {
        self.upstream_done.is_cancelled()
    }

    /// Ends the tunnel now, from any request (a malformed write, for one).
    pub fn kill(&self) {
        self.upstream_done.cancel();
        self.closed.cancel();
    }

    /// Waits for the reader lock, counted as a waiting reader until it has it.
    pub async fn lock_output(&self) -> tokio::sync::OwnedMutexGuard<mpsc::Receiver<Bytes>> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.readers_waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.readers_waiting);
        self.reader_arrived.notify_one();
        self.output.clone().lock_owned().await
    }

    pub fn readers_waiting(&self) -> bool {
        self.readers_waiting.load(Ordering::SeqCst) > 0
    }

    pub async fn reader_arrived(&self) {
        self.reader_arrived.notified().await;
    }

    /// Ends the active read at its next instruction boundary (or the next read at once, when none is
    /// active): the node it came through is stopping.
    pub fn release_read(&self) {
        self.release.store(true, Ordering::SeqCst);
        self.reader_arrived.notify_one();
    }

    /// Whether a release was asked for since the last call.
    pub fn take_release(&self) -> bool {
        self.release.swap(false, Ordering::SeqCst)
    }

    /// The read has seen the end of guacd's output: deregister.
    pub fn finish(&self) {
        self.closed.cancel();
    }

    /// Queues instructions for guacd; false once guacd is gone (the data is dropped, as Java does).
    pub async fn send(&self, instructions: Bytes) -> bool {
        self.input.send(instructions).await.is_ok()
    }

    /// Takes the write turn; the turn's start and end mark the client's write cadence.
    pub async fn lock_writer(&self) -> WriteTurn<'_> {
        let turn = self.writer.lock().await;
        self.cadence().heard();
        WriteTurn {
            tunnel: self,
            _turn: turn,
        }
    }

    /// When the client's writes will have stopped (see [`Cadence`]), unless one arrives first.
    fn writes_deadline(&self) -> Instant {
        self.cadence().deadline()
    }

    /// A read is open and no write is: a client that keeps writing would have one or the other.
    fn reading_without_writing(&self) -> bool {
        self.output.try_lock().is_err() && self.writer.try_lock().is_ok()
    }

    fn cadence(&self) -> std::sync::MutexGuard<'_, Cadence> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write request's turn at guacd.
pub struct WriteTurn<'a> {
    tunnel: &'a HttpTunnel,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        self.tunnel.cadence().heard();
    }
}

/// When the client's writes come: guacamole-common-js writes at least every 500 ms (a `nop`) while its tab
/// is shown, every second or so when hidden, every 10 s at worst when the browser throttles the tab hard. A
/// client whose writes stop for four times the longest recent gap (within [`WRITES_STOPPED_MIN`] and
/// [`WRITES_STOPPED_MAX`]) while it reads has a write stuck somewhere.
struct Cadence {
    last: Instant,
    /// The longest gap between recent writes, fading by an eighth with each write; it starts at the
    /// largest, so that a new tunnel's client is given the longest.
    longest: Duration,
}

impl Cadence {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            longest: WRITES_STOPPED_MAX,
        }
    }

    fn heard(&mut self) {
        let now = Instant::now();
        self.longest = (now - self.last).max(self.longest - self.longest / 8);
        self.last = now;
    }

    fn deadline(&self) -> Instant {
        self.last + (self.longest * 4).clamp(WRITES_STOPPED_MIN, WRITES_STOPPED_MAX)
    }
}

struct Owner {
    tunnel: Arc<HttpTunnel>,
    registration: Registration,
    node: Node,
    entry: Entry,
}

impl Owner {
    async fn run(self, guacd: Guacd, output: mpsc::Sender<Bytes>, input: mpsc::Receiver<Bytes>) {
        let tunnel = &self.tunnel;
        let end = tokio::select! {
            end = relay(guacd, &output, input, self.registration.traffic()) => end,
            () = self.idle() => Err(TunnelError::Idle),
            () = self.writes_stop() => Err(TunnelError::WritesStopped),
            () = tunnel.closed.cancelled() => Ok(()),
            stopped = self.registration.stopped() => Err(stopped),
        };
        // The guacd socket was dropped with `relay`.
        tunnel.upstream_done.cancel();
        match &end {
            Ok(()) => debug!(tunnel = %tunnel.id, "guacd closed the tunnel"),
            Err(error) => {
                debug!(tunnel = %tunnel.id, side = %error.side(), %error, "tunnel ended");
                let status = error.status();
                let notice = Instruction::new(
                    "error",
                    [error.public_message().to_owned(), status.code().to_string()],
                );
                // If the queue is full the reader is gone or slow; the status still ends the client's stream.
                let _ = output.try_send(Bytes::from(notice.encode()));
            }
        }
        drop(output);
        let node_stopping = self.node.closing();
        if !tunnel.is_closed() && !node_stopping.is_cancelled() {
            // Let a reader drain what guacd said last, but no longer than an idle tunnel may live.
            tokio::select! {
                () = tunnel.closed.cancelled() => {}
                () = self.idle() => {}
                () = node_stopping.cancelled() => {}
            }
        }
        tunnel.closed.cancel();
        let Owner {
            tunnel,
            registration,
            entry,
            ..
        } = self;
        drop(entry);
        registration.close(&end).await;
        debug!(tunnel = %tunnel.id, "tunnel deregistered");
    }

    /// Returns once the client reads but its writes have stopped arriving: the tunnel is ended with a
    /// status that says to reconnect, which the client's next read brings it.
    async fn writes_stop(&self) {
        loop {
            let (deadline, now) = (self.tunnel.writes_deadline(), Instant::now());
            if deadline <= now && self.tunnel.reading_without_writing() {
                return;
            }
            // A write moves the deadline, earlier too (the cadence quickens), but never to before
            // `WRITES_STOPPED_MIN` after it, so looking again by then is never late. (Past the deadline: a
            // write in progress, or no read, which is the idle timeout's to end.)
            let soon = now + WRITES_STOPPED_MIN;
            sleep_until(if deadline > now {
                deadline.min(soon)
            } else {
                soon
            })
            .await;
        }
    }

    /// Returns once no request has touched the tunnel for the idle timeout.
    async fn idle(&self) {
        loop {
            let deadline = self.tunnel.idle_deadline(self.node.timeouts().http_tunnel);
            if deadline <= Instant::now() {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

/// Moves bytes both ways until guacd ends (`Ok`) or fails.
async fn relay(
    guacd: Guacd,
    output: &mpsc::Sender<Bytes>,
    mut input: mpsc::Receiver<Bytes>,
    traffic: &Traffic,
) -> Result<(), TunnelError> {
    let (mut from_guacd, mut to_guacd) = guacd.split();
    let downstream = async {
        while let Some(batch) = from_guacd.next(traffic).await? {
            if output.send(batch).await.is_err() {
                break;
            }
        }
        Ok(())
    };
    let upstream = async {
        while let Some(instructions) = input.recv().await {
            to_guacd
                .write_all(&instructions)
                .await
                .map_err(TunnelError::UpstreamIo)?;
            traffic.sent_upstream(instructions.len());
        }
        Ok(())
    };
    tokio::select! {
        end = downstream => end,
        end = upstream => end,
    }
}
